"""The superior rates the ratee's agreed personal goals on the evaluation form; they count.

A real demo cycle (external-service policy: up to 3 personal goals sharing 6% of the total in
the development category): one employee adds two goals at target setting, everyone signs, and
the evaluation stage opens. Pages are driven through HTTP with real task links and CSRF tokens.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from perfcycle.core.db import session_scope
from perfcycle.core.errors import InvalidInput
from perfcycle.core.settings import get_settings
from perfcycle.domain import engine
from perfcycle.domain.access import Actor
from perfcycle.domain.models import (
    Evaluation,
    EvaluationDraft,
    Participant,
    RaterAssignment,
    Result,
)
from perfcycle.domain.policy.snapshot import cycle_policy
from perfcycle.domain.stages.evaluation import (
    assignment_items,
    import_evaluations_csv,
    items_for,
    load_draft,
    submit_evaluation,
)
from perfcycle.domain.stages.target_setting import save_personal_goals
from perfcycle.web import i18n
from tests.support import databases
from tests.support.cycle import decide, play_until_waiting_at, run_until_wait
from tests.support.portal import csrf_of, error_of, form_of, signed_in, state_of

GOALS = [
    {
        "title": "Publish the refund FAQ",
        "measure": "FAQ pages published on the help centre",
        "target": "12",
        "deadline": "2026-12-15",
        "weight": "4",
    },
    {
        "title": "Mentor two new agents",
        "measure": "new agents signed off on their own queue",
        "target": "2",
        "deadline": "2026-11-30",
        "weight": "2",
    },
]
EN = "en"


@dataclass(frozen=True)
class Setup:
    url: str
    cycle_id: int
    manager: str
    employee: str  # has the two personal goals
    other: str  # another report of the same manager, without personal goals


def manager_with_two_reports(session: Session, cycle_id: int) -> tuple[str, str, str]:
    rows = session.execute(
        select(Participant.manager_id, Participant.employee_id)
        .where(Participant.cycle_id == cycle_id, Participant.manager_id.is_not(None))
        .order_by(Participant.manager_id, Participant.employee_id)
    ).all()
    reports: dict[str, list[str]] = {}
    for manager_id, employee_id in rows:
        reports.setdefault(str(manager_id), []).append(employee_id)
    manager, (first, second, *_) = next((m, r) for m, r in reports.items() if len(r) >= 2)
    return manager, first, second


@pytest.fixture
def setup(
    db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    started_cycle: databases.StartedCycle,
) -> Iterator[Setup]:
    cycle_id = databases.use_started(started_cycle, db_url, tmp_path, monkeypatch)
    with session_scope(db_url) as s:
        manager, employee, other = manager_with_two_reports(s, cycle_id)
        assert save_personal_goals(s, cycle_id, employee, GOALS, actor=Actor.person(employee)) == 2
    # Everyone signs with their manager (the employee's goals included), evaluation opens.
    assert play_until_waiting_at(db_url, cycle_id, "evaluation").next == "people"
    yield Setup(db_url, cycle_id, manager, employee, other)
    get_settings.cache_clear()


def assignment_of(url: str, cycle_id: int, ratee: str, rater_type: str) -> RaterAssignment:
    with session_scope(url) as s:
        found = s.scalars(
            select(RaterAssignment)
            .where(
                RaterAssignment.cycle_id == cycle_id,
                RaterAssignment.ratee_id == ratee,
                RaterAssignment.rater_type == rater_type,
            )
            .order_by(RaterAssignment.id)
        ).first()
        assert found is not None, (ratee, rater_type)
        s.expunge(found)
        return found


def assignments_of(url: str, cycle_id: int, ratee: str) -> list[RaterAssignment]:
    with session_scope(url) as s:
        found = list(
            s.scalars(
                select(RaterAssignment).where(
                    RaterAssignment.cycle_id == cycle_id, RaterAssignment.ratee_id == ratee
                )
            )
        )
        s.expunge_all()
        return found


def saved(url: str, assignment_id: int) -> dict[str, int]:
    with session_scope(url) as s:
        rows = s.execute(
            select(Evaluation.item, Evaluation.score).where(
                Evaluation.assignment_id == assignment_id
            )
        ).tuples()
        return dict(rows.all())


def policy_answers(url: str, cycle_id: int, rater_type: str) -> dict[str, tuple[int | str, str]]:
    with session_scope(url) as s:
        policy = cycle_policy(engine.get_cycle(s, cycle_id))
    return {i.id: (4, "") for i in items_for(policy, rater_type)}


def en(key: str) -> str:
    return i18n.translate(key, EN)


# ---------------------------------------------------------------- the form


def test_the_superior_sees_and_must_answer_each_personal_goal_a_peer_does_not(
    setup: Setup,
) -> None:
    mine = assignment_of(setup.url, setup.cycle_id, setup.employee, "superior")
    assert mine.rater_id == setup.manager
    boss = signed_in(setup.url, setup.manager, setup.cycle_id, "evaluation", "evaluation:1")
    form = boss.get(f"/evaluations/{mine.id}?lang=en")
    assert form.status_code == 200
    for n, goal in enumerate(GOALS, 1):
        fieldset = form.text.split(f'id="item-personal-{n}"')[1].split("</fieldset>")[0]
        assert goal["title"] in fieldset and goal["measure"] in fieldset
        assert goal["target"] in fieldset and goal["deadline"] in fieldset
        for level in (1, 2, 3, 4, 5):
            assert f'name="score.personal-{n}" value="{level}"' in fieldset
            assert en(f"eval.goal.attainment.{level}") in fieldset
        assert i18n.translate("eval.comment_required_for", EN, levels="1, 5") in fieldset
    # The attainment scale exists in both languages.
    assert i18n.translate("eval.goal.attainment.5", "zh-CN") != en("eval.goal.attainment.5")
    token = csrf_of(form.text)

    answers = policy_answers(setup.url, setup.cycle_id, "superior")
    unanswered = boss.post(f"/evaluations/{mine.id}", data=form_of(answers, token))
    assert unanswered.status_code == 422
    for n in (1, 2):
        assert en("problem.missing_score") in error_of(unanswered.text, f"personal-{n}")
    no_comment = boss.post(
        f"/evaluations/{mine.id}",
        data=form_of({**answers, "personal-1": (5, ""), "personal-2": (3, "")}, token),
    )
    assert no_comment.status_code == 422
    assert i18n.translate("problem.comment_needed", EN, score=5) in error_of(
        no_comment.text, "personal-1"
    )
    assert (saved(setup.url, mine.id), state_of(setup.url, mine.id)) == ({}, "pending")

    done = boss.post(
        f"/evaluations/{mine.id}",
        data=form_of(
            {
                **answers,
                "personal-1": (5, "all twelve pages live in November"),
                "personal-2": (3, ""),
            },
            token,
        ),
    )
    assert done.status_code == 303
    stored = saved(setup.url, mine.id)
    assert {k: v for k, v in stored.items() if k.startswith("personal-")} == {
        "personal-1": 5,
        "personal-2": 3,
    }
    assert len(stored) == len(answers) + 2
    assert "all twelve pages live in November" in boss.get(f"/evaluations/{mine.id}").text

    # Nobody else who rates the employee, the employee themself included, is asked about them.
    others = [a for a in assignments_of(setup.url, setup.cycle_id, setup.employee)
              if a.rater_type != "superior"]
    assert {a.rater_type for a in others} >= {"peer", "self"}
    for a in others:
        client = signed_in(setup.url, a.rater_id, setup.cycle_id, "evaluation", "evaluation:1")
        page = client.get(f"/evaluations/{a.id}?lang=en")
        assert page.status_code == 200
        assert "score.personal-" not in page.text
        assert GOALS[0]["title"] not in page.text
        refused = client.post(
            f"/evaluations/{a.id}",
            data=form_of(
                {**policy_answers(setup.url, setup.cycle_id, a.rater_type), "personal-1": (4, "")},
                csrf_of(page.text),
            ),
        )
        assert refused.status_code == 422
        assert i18n.translate("problem.unknown_item", EN, item="personal-1") in refused.text
        assert state_of(setup.url, a.id) == "pending"


def test_a_goal_item_of_another_ratee_is_refused_and_nothing_is_saved(setup: Setup) -> None:
    theirs = assignment_of(setup.url, setup.cycle_id, setup.other, "superior")
    assert theirs.rater_id == setup.manager
    boss = signed_in(setup.url, setup.manager, setup.cycle_id, "evaluation", "evaluation:1")
    page = boss.get(f"/evaluations/{theirs.id}?lang=en")
    assert "score.personal-" not in page.text  # `other` has no personal goals
    token = csrf_of(page.text)
    answers = policy_answers(setup.url, setup.cycle_id, "superior")

    # The employee's goal posted on the other ratee's form.
    tampered = boss.post(
        f"/evaluations/{theirs.id}", data=form_of({**answers, "personal-1": (4, "")}, token)
    )
    assert tampered.status_code == 422
    assert i18n.translate("problem.unknown_item", EN, item="personal-1") in tampered.text
    assert (saved(setup.url, theirs.id), state_of(setup.url, theirs.id)) == ({}, "pending")

    draft = boss.post(
        f"/evaluations/{theirs.id}",
        data={**form_of({"personal-1": (4, "")}, token), "action": "draft"},
    )
    assert draft.status_code == 422
    assert i18n.translate("problem.unknown_item", EN, item="personal-1") in draft.text
    with session_scope(setup.url) as s:
        assert s.scalar(
            select(func.count()).select_from(EvaluationDraft).where(
                EvaluationDraft.assignment_id == theirs.id
            )
        ) == 0

    # The domain refuses it too, naming the item as the problem's field.
    with session_scope(setup.url) as s:
        policy = cycle_policy(engine.get_cycle(s, setup.cycle_id))
        with pytest.raises(InvalidInput) as err:
            scores = {item: (4, "") for item in [*answers, "personal-1"]}
            submit_evaluation(s, theirs.id, scores, Actor.person(setup.manager), policy)
    assert [p.field for p in err.value.problems] == ["personal-1"]
    assert state_of(setup.url, theirs.id) == "pending"

    # The same goal on its own ratee's form is a draft like any other item.
    mine = assignment_of(setup.url, setup.cycle_id, setup.employee, "superior")
    page = boss.get(f"/evaluations/{mine.id}")
    kept = boss.post(
        f"/evaluations/{mine.id}",
        data={**form_of({"personal-2": (2, "halfway")}, csrf_of(page.text)), "action": "draft"},
    )
    assert kept.status_code == 303
    with session_scope(setup.url) as s:
        assert load_draft(s, mine.id) == {"personal-2": (2, "halfway")}
    assert 'value="2" checked' in boss.get(f"/evaluations/{mine.id}").text.split(
        'id="item-personal-2"'
    )[1].split("</fieldset>")[0]


def test_paper_forms_of_the_superior_rate_the_personal_goals_too(
    setup: Setup, tmp_path: Path
) -> None:
    mine = assignment_of(setup.url, setup.cycle_id, setup.employee, "superior")
    theirs = assignment_of(setup.url, setup.cycle_id, setup.other, "superior")
    answers = policy_answers(setup.url, setup.cycle_id, "superior")
    header = "rater_id,ratee_id,rater_type,item,score,comment\n"

    def rows(ratee: str, items: dict[str, int]) -> str:
        return "".join(
            f"{setup.manager},{ratee},superior,{item},{score},seen\n"
            for item, score in items.items()
        )

    policy_scores = {item: 4 for item in answers}
    incomplete = tmp_path / "incomplete.csv"
    incomplete.write_text(
        header
        + rows(setup.employee, {**policy_scores, "personal-1": 4})
        + rows(setup.other, {**policy_scores, "personal-2": 4}),
        encoding="utf-8",
    )
    with session_scope(setup.url) as s:
        policy = cycle_policy(engine.get_cycle(s, setup.cycle_id))
        with pytest.raises(InvalidInput) as err:
            import_evaluations_csv(s, setup.cycle_id, incomplete, policy, Actor.hr("hr-admin"))
    messages = [p.message for p in err.value.problems]
    assert "item personal-2 is not answered" in messages
    assert any("personal-2 is not an item for this rater" in m for m in messages)
    assert (state_of(setup.url, mine.id), state_of(setup.url, theirs.id)) == ("pending", "pending")

    complete = tmp_path / "complete.csv"
    complete.write_text(
        header
        + rows(setup.employee, {**policy_scores, "personal-1": 4, "personal-2": 2})
        + rows(setup.other, policy_scores),
        encoding="utf-8",
    )
    with session_scope(setup.url) as s:
        policy = cycle_policy(engine.get_cycle(s, setup.cycle_id))
        hr = Actor.hr("hr-admin")
        assert import_evaluations_csv(s, setup.cycle_id, complete, policy, hr) == 2
        ids = [i.id for i in assignment_items(
            s, policy, setup.cycle_id, setup.employee, "superior"
        )]
    assert ids == [*answers, "personal-1", "personal-2"]
    assert saved(setup.url, mine.id)["personal-2"] == 2


# ---------------------------------------------------------------- results


def test_results_after_submission_include_the_personal_goals(setup: Setup) -> None:
    mine = assignment_of(setup.url, setup.cycle_id, setup.employee, "superior")
    boss = signed_in(setup.url, setup.manager, setup.cycle_id, "evaluation", "evaluation:1")
    token = csrf_of(boss.get(f"/evaluations/{mine.id}").text)
    answers = {
        **policy_answers(setup.url, setup.cycle_id, "superior"),
        "personal-1": (4, ""),  # 80
        "personal-2": (1, "not started"),  # 20
    }
    assert boss.post(f"/evaluations/{mine.id}", data=form_of(answers, token)).status_code == 303

    # Everyone else answers; calibration computes the results and the committee approves.
    assert play_until_waiting_at(setup.url, setup.cycle_id, "calibration").next == "approval"
    with session_scope(setup.url) as s:
        result = s.scalars(
            select(Result).where(
                Result.cycle_id == setup.cycle_id, Result.employee_id == setup.employee
            )
        ).one()
        other = s.scalars(
            select(Result).where(
                Result.cycle_id == setup.cycle_id, Result.employee_id == setup.other
            )
        ).one()
        policy = cycle_policy(engine.get_cycle(s, setup.cycle_id))
        development = [i for i in policy.indicators if i.category == "development"]
        indicators, categories = dict(result.indicators), dict(result.categories)
    assert indicators["personal-1"] == pytest.approx(80.0)
    assert indicators["personal-2"] == pytest.approx(20.0)
    assert not any("personal" in f for f in result.flags)
    assert not any(k.startswith("personal-") for k in other.indicators)
    # development (weight 15 in the external-service policy): its indicators keep 15 - 6 = 9,
    # the goals 4 and 2.
    weight = next(c.weight for c in policy.categories if c.id == "development")
    pairs = [(i.weight / 100 * (weight - 6), indicators[i.id]) for i in development]
    pairs += [(4.0, 80.0), (2.0, 20.0)]
    expected = sum(w * v for w, v in pairs) / sum(w for w, _ in pairs)
    assert categories["development"] == pytest.approx(expected)

    decide(setup.url, setup.cycle_id, decision="approve", approver="committee")
    run_until_wait(setup.url, setup.cycle_id)
    me = signed_in(setup.url, setup.employee, setup.cycle_id, "results", f"cycle:{setup.cycle_id}")
    page = me.get(f"/me?cycle={setup.cycle_id}&lang=en")
    assert page.status_code == 200
    section = page.text.split('id="personal"')[1].split("</section>")[0]
    first = section.split('id="personal-goal-personal-1"')[1].split("</tr>")[0]
    assert GOALS[0]["title"] in first and GOALS[0]["measure"] in first and "80.0" in first
    second = section.split('id="personal-goal-personal-2"')[1].split("</tr>")[0]
    assert GOALS[1]["title"] in second and "20.0" in second
    row = page.text.split('id="indicator-personal-2"')[1].split("</tr>")[0]
    assert GOALS[1]["title"] in row and "20.0" in row
