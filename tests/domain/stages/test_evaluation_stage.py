"""The multi-rater evaluation stage: assignment, submission, send-back and paper-form import."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from perfcycle.core.db import session_scope
from perfcycle.core.errors import InvalidInput
from perfcycle.domain.access import Actor
from perfcycle.domain.models import (
    AuditEvent,
    Cycle,
    Department,
    Employee,
    Evaluation,
    OutboxMessage,
    Participant,
    RaterAssignment,
    StageInstance,
)
from perfcycle.domain.policy.schema import Policy
from perfcycle.domain.stages.base import Progress, StageContext
from perfcycle.domain.stages.evaluation import (
    Handler,
    import_evaluations_csv,
    items_for,
    load_draft,
    reopen_evaluations,
    save_draft,
    submit_evaluation,
)

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
DUE = NOW + timedelta(days=14)


def text(zh: str, en: str) -> dict[str, str]:
    return {"zh-CN": zh, "en": en}


ANCHORS = {n: text(f"等级{n}", f"level {n}") for n in range(1, 6)}
POLICY = Policy.model_validate(
    {
        "id": "test",
        "title": text("测试", "Test"),
        "department_types": ["external_service"],
        "grades": [
            {"id": "A", "name": text("优秀", "Excellent"), "min": 90},
            {"id": "C", "name": text("待改进", "Needs improvement"), "min": 0},
        ],
        "veto_cap": "C",
        "categories": [{"id": "process", "name": text("过程", "Process"), "weight": 100}],
        "indicators": [
            {
                "kind": "rated",
                "id": "attitude",
                "name": text("服务态度", "Service attitude"),
                "category": "process",
                "weight": 60,
                "rule": {"type": "bars"},
                "anchors": ANCHORS,
            },
            {
                "kind": "rated",
                "id": "teamwork",
                "name": text("团队协作", "Teamwork"),
                "category": "process",
                "weight": 40,
                "rule": {"type": "bars"},
                "anchors": ANCHORS,
                "raters": ["self", "superior", "peer"],
                "comment_required_for": [1],
            },
        ],
        "raters": {
            "service_recipient": {"weight": 40, "count": 3},
            "superior": {"weight": 25},
            "peer": {"weight": 15, "count": 2},
            "self": {"weight": 10},
            "third_party": {"weight": 10, "count": 1},
        },
        "stages": [{"name": "evaluation", "days": 14}],
        "improvement": {"grades": ["C"]},
    }
)

# ---------------------------------------------------------------- the sample organisation
# D1 (20): head S01 with team leads S02 (S04-S11) and S03 (S12-S20).
# D2 (10): head I01 (reports to S01, across departments) with I02-I10.
# D3 (10): head L01 with L02-L10; L10 has left the company.
DEPARTMENTS = [
    ("D1", "客户服务中心", "external_service"),
    ("D2", "信息技术部", "internal_service"),
    ("D3", "法务部", "professional_support"),
]


def org_people() -> list[tuple[str, str, str | None, bool]]:
    """(id, department, manager, active)."""
    people: list[tuple[str, str, str | None, bool]] = [
        ("S01", "D1", None, True),
        ("S02", "D1", "S01", True),
        ("S03", "D1", "S01", True),
    ]
    people += [(f"S{i:02d}", "D1", "S02", True) for i in range(4, 12)]
    people += [(f"S{i:02d}", "D1", "S03", True) for i in range(12, 21)]
    people += [("I01", "D2", "S01", True)]
    people += [(f"I{i:02d}", "D2", "I01", True) for i in range(2, 11)]
    people += [("L01", "D3", None, True)]
    people += [(f"L{i:02d}", "D3", "L01", i != 10) for i in range(2, 11)]
    return people


def build_cycle(url: str, people: list[tuple[str, str, str | None, bool]] | None = None) -> int:
    """Departments, employees, a cycle with its evaluation stage and every active participant."""
    people = org_people() if people is None else people
    with session_scope(url) as s:
        s.add_all(Department(id=d, name=n, type=t) for d, n, t in DEPARTMENTS)
        s.flush()
        for eid, dept, manager, active in people:  # managers come first in the list
            s.add(
                Employee(
                    id=eid,
                    name=f"员工{eid}",
                    email=f"{eid.lower()}@example.cn",
                    department_id=dept,
                    manager_id=manager,
                    locale="en" if dept == "D2" else "zh-CN",
                    active=active,
                )
            )
            s.flush()
        cycle = Cycle(
            policy="test",
            policy_digest="0" * 64,
            period="2026-Q4",
            period_start=date(2026, 10, 1),
            period_end=date(2026, 12, 31),
            start_date=date(2026, 10, 1),
            created_at=NOW,
            current_stage="evaluation",
        )
        s.add(cycle)
        s.flush()
        s.add(
            StageInstance(
                cycle_id=cycle.id, name="evaluation", position=3, opened_at=NOW, due_at=DUE
            )
        )
        s.add_all(
            Participant(cycle_id=cycle.id, employee_id=e, department_id=d, manager_id=m)
            for e, d, m, active in people
            if active
        )
        return cycle.id


def enter(url: str, cycle_id: int) -> dict[str, Any]:
    with session_scope(url) as s:
        cycle, stage = cycle_and_stage(s, cycle_id)
        return Handler().enter(StageContext(s, cycle, POLICY, stage))


def progress(url: str, cycle_id: int) -> Progress:
    with session_scope(url) as s:
        cycle, stage = cycle_and_stage(s, cycle_id)
        return Handler().progress(StageContext(s, cycle, POLICY, stage))


def close(url: str, cycle_id: int) -> dict[str, Any]:
    with session_scope(url) as s:
        cycle, stage = cycle_and_stage(s, cycle_id)
        return Handler().close(StageContext(s, cycle, POLICY, stage))


def cycle_and_stage(s: Session, cycle_id: int) -> tuple[Cycle, StageInstance]:
    cycle = s.get_one(Cycle, cycle_id)
    stage = s.scalars(select(StageInstance).where(StageInstance.cycle_id == cycle_id)).one()
    return cycle, stage


def assignments(url: str) -> dict[tuple[str, str, str], tuple[int, str, int]]:
    """(rater, ratee, type) -> (id, state, round)."""
    with session_scope(url) as s:
        return {
            (a.rater_id, a.ratee_id, a.rater_type): (a.id, a.state, a.round)
            for a in s.scalars(select(RaterAssignment))
        }


def assignment_id(url: str, rater: str, ratee: str, rater_type: str) -> int:
    return assignments(url)[(rater, ratee, rater_type)][0]


def snapshot(url: str) -> tuple[Any, ...]:
    """Everything the evaluation stage writes, to show that a rejected call wrote nothing."""
    with session_scope(url) as s:
        evaluations = sorted(
            (e.assignment_id, e.item, e.score, e.comment) for e in s.scalars(select(Evaluation))
        )
        audit = s.scalar(select(func.count()).select_from(AuditEvent))
    return assignments(url), evaluations, audit


def answers_for(rater_type: str, score: int = 4) -> dict[str, tuple[int, str]]:
    return {i.id: (score, "") for i in items_for(POLICY, rater_type)}


# Paper forms are entered by HR on the raters' behalf: HR may submit any form.
CLERK = Actor.hr("u")


def submit(
    url: str, aid: int, answers: dict[str, tuple[Any, str]], actor: Actor = CLERK
) -> None:
    with session_scope(url) as s:
        submit_evaluation(s, aid, answers, actor, POLICY)


@pytest.fixture
def cycle_id(db_url: str, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setenv("PERFCYCLE_NOW", NOW.isoformat())
    return build_cycle(db_url)


@pytest.fixture
def entered(db_url: str, cycle_id: int) -> int:
    enter(db_url, cycle_id)
    return cycle_id


# ---------------------------------------------------------------- enter()

MANAGER = {e: m for e, _, m, _ in org_people()}
DEPARTMENT = {e: d for e, d, _, _ in org_people()}
INACTIVE = {e for e, _, _, active in org_people() if not active}
MANAGERS = {m for e, _, m, active in org_people() if m and active}


def test_enter_gives_every_participant_the_policy_raters(db_url: str, cycle_id: int):
    result = enter(db_url, cycle_id)

    rows = assignments(db_url)
    by_ratee: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for rater, ratee, rater_type in rows:
        by_ratee[ratee][rater_type].append(rater)
    participants = [e for e in DEPARTMENT if e not in INACTIVE]
    assert sorted(by_ratee) == sorted(participants)
    for ratee in participants:
        raters = by_ratee[ratee]
        boss = MANAGER[ratee]
        assert raters["self"] == [ratee]
        assert raters["superior"] == ([boss] if boss else [])
        assert len(raters["peer"]) == 2
        assert all(DEPARTMENT[p] == DEPARTMENT[ratee] for p in raters["peer"])
        team = {
            e
            for e in participants
            if e != ratee and boss and MANAGER[e] == boss and DEPARTMENT[e] == DEPARTMENT[ratee]
        }
        assert len(team & set(raters["peer"])) == min(2, len(team)), ratee  # teammates first
        assert len(raters["service_recipient"]) == 3
        assert all(DEPARTMENT[r] != DEPARTMENT[ratee] for r in raters["service_recipient"])
        assert len(raters["third_party"]) == 1
        assert all(DEPARTMENT[r] != DEPARTMENT[ratee] for r in raters["third_party"])
        assert set(raters["third_party"]) <= MANAGERS
        everyone = [r for group in raters.values() for r in group]
        assert len(everyone) == len(set(everyone)), (ratee, raters)  # nobody twice
        assert ratee not in everyone[1:] and not INACTIVE & set(everyone)
    assert result == {"assignments_created": len(rows), "mails_enqueued": len({r[0] for r in rows})}
    assert all(state == "pending" for _, state, _ in rows.values())


def test_enter_sends_one_mail_per_rater_listing_their_ratees(db_url: str, entered: int):
    rows = assignments(db_url)
    with session_scope(db_url) as s:
        mails = s.scalars(select(OutboxMessage)).all()
        events = s.scalars(select(AuditEvent)).all()

    per_rater = Counter(rater for rater, _, _ in rows)
    assert Counter(m.recipient_id for m in mails) == Counter(set(per_rater))
    for mail in mails:
        assert mail.recipient_id is not None
        assert mail.template == "evaluation_assigned"
        assert (
            mail.idempotency_key == f"{entered}:{mail.recipient_id}:evaluation_assigned:"
            "evaluation:1"
        )
        assert mail.recipient_email == f"{mail.recipient_id.lower()}@example.cn"
        assert mail.locale == ("en" if mail.recipient_id.startswith("I") else "zh-CN")
        ctx = mail.context
        assert (ctx["cycle_id"], ctx["stage"], ctx["due_at"]) == (
            entered,
            "evaluation",
            DUE.isoformat(),
        )
        assert ctx["count"] == per_rater[mail.recipient_id] == len(ctx["ratees"])
        assert {(r["employee_id"], r["rater_type"]) for r in ctx["ratees"]} == {
            (ratee, t) for rater, ratee, t in rows if rater == mail.recipient_id
        }
        assert all(r["name"] == f"员工{r['employee_id']}" for r in ctx["ratees"])
    assert [(e.action, e.subject) for e in events] == [("evaluation.assigned", f"cycle:{entered}")]
    assert events[0].after == {
        "assignments": len(rows),
        "raters": len(per_rater),
        "mails": len(mails),
        "attempt": 1,
    }


def test_enter_again_creates_nothing(db_url: str, entered: int):
    with session_scope(db_url) as s:
        outbox_before = sorted(s.scalars(select(OutboxMessage.idempotency_key)))
    before = snapshot(db_url)

    assert enter(db_url, entered) == {"assignments_created": 0, "mails_enqueued": 0}

    with session_scope(db_url) as s:
        assert sorted(s.scalars(select(OutboxMessage.idempotency_key))) == outbox_before
    assert snapshot(db_url) == before


def test_raters_are_fixed_once_drawn_and_late_participants_get_theirs(db_url: str, entered: int):
    before = assignments(db_url)
    with session_scope(db_url) as s:  # S04 moves team; a new hire joins the cycle late
        s.get_one(Employee, "S04").manager_id = "S03"
        s.add(
            Employee(
                id="S21",
                name="员工S21",
                email="s21@example.cn",
                department_id="D1",
                manager_id="S03",
                locale="zh-CN",
            )
        )
        s.flush()
        s.add(
            Participant(cycle_id=entered, employee_id="S21", department_id="D1", manager_id="S03")
        )

    result = enter(db_url, entered)

    after = assignments(db_url)
    added = set(after) - set(before)
    assert {ratee for _, ratee, _ in added} == {"S21"}
    assert Counter(t for _, _, t in added) == {
        "self": 1,
        "superior": 1,
        "peer": 2,
        "service_recipient": 3,
        "third_party": 1,
    }
    assert result["assignments_created"] == len(added) == 8
    with session_scope(db_url) as s:  # only S21's raters without an earlier mail hear of it
        mails = s.scalars(select(OutboxMessage).where(OutboxMessage.recipient_id == "S21")).all()
    assert [m.context["ratees"] for m in mails] == [
        [{"employee_id": "S21", "name": "员工S21", "rater_type": "self"}]
    ]


@pytest.mark.usefixtures("entered")
def test_enter_is_deterministic_across_databases(tmp_path: Path, db_url: str):
    from perfcycle.core.db import get_engine
    from perfcycle.domain.models import Base

    other = f"sqlite:///{tmp_path}/other.db"
    Base.metadata.create_all(get_engine(other))
    other_cycle = build_cycle(other)
    enter(other, other_cycle)

    assert set(assignments(other)) == set(assignments(db_url))


def test_small_pools_give_what_exists_and_raters_come_from_outside_the_scope(
    db_url: str, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("PERFCYCLE_NOW", NOW.isoformat())
    people: list[tuple[str, str, str | None, bool]] = [
        ("S01", "D1", None, True),
        ("S02", "D1", "S01", True),
        ("I01", "D2", None, True),
        ("L01", "D3", None, True),
    ]
    cycle = build_cycle(db_url, people)
    with session_scope(db_url) as s:  # the cycle's scope is D1 only
        s.query(Participant).filter(Participant.department_id != "D1").delete()

    enter(db_url, cycle)

    got = sorted(assignments(db_url))
    assert got == sorted(
        [
            ("S01", "S01", "self"),
            ("S02", "S01", "peer"),  # only one colleague exists
            ("S02", "S02", "self"),
            ("S01", "S02", "superior"),  # so S02 has no peer left
            *[(r, e, "service_recipient") for r in ("I01", "L01") for e in ("S01", "S02")],
        ]
    )


# ---------------------------------------------------------------- submit_evaluation()


@pytest.mark.usefixtures("entered")
def test_submit_records_scores_and_closes_the_assignment(db_url: str):
    aid = assignment_id(db_url, "S04", "S04", "self")

    submit(
        db_url, aid, {"attitude": (5, "总是主动问候"), "teamwork": (3, "")}, actor=Actor.person(
            "S04"
        )
    )

    with session_scope(db_url) as s:
        a = s.get_one(RaterAssignment, aid)
        assert (a.state, a.submitted_at) == ("submitted", NOW)
        stored = {e.item: (e.score, e.comment) for e in s.scalars(select(Evaluation))}
        event = s.scalars(select(AuditEvent).order_by(AuditEvent.id.desc())).first()
    assert stored == {"attitude": (5, "总是主动问候"), "teamwork": (3, "")}
    assert event is not None
    assert (event.action, event.actor, event.subject) == (
        "evaluation.submitted",
        "S04",
        f"assignment:{aid}",
    )
    assert event.after == {
        "ratee": "S04",
        "rater_type": "self",
        "scores": {"attitude": 5, "teamwork": 3},
    }


def test_items_follow_the_rater_type():
    assert [i.id for i in items_for(POLICY, "peer")] == ["attitude", "teamwork"]
    assert [i.id for i in items_for(POLICY, "service_recipient")] == ["attitude"]


@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        ({"attitude": (4, "")}, [("teamwork", "item teamwork is not answered")]),
        (
            {"attitude": (4, ""), "teamwork": (4, ""), "speed": (3, "")},
            [("speed", "speed is not an item for this rater (expected attitude, teamwork)")],
        ),
        (
            {"attitude": (6, ""), "teamwork": (0, "")},
            [
                ("attitude", "attitude: score must be an integer from 1 to 5, got 6"),
                ("teamwork", "teamwork: score must be an integer from 1 to 5, got 0"),
            ],
        ),
        (
            {"attitude": ("4", ""), "teamwork": (3.0, "")},
            [
                ("attitude", "attitude: score must be an integer from 1 to 5, got '4'"),
                ("teamwork", "teamwork: score must be an integer from 1 to 5, got 3.0"),
            ],
        ),
        (
            {"attitude": (True, ""), "teamwork": (2, "")},
            [("attitude", "attitude: score must be an integer from 1 to 5, got True")],
        ),
        (
            {"attitude": (5, "  "), "teamwork": (1, "")},
            [
                ("attitude", "attitude: a score of 5 needs a comment"),
                ("teamwork", "teamwork: a score of 1 needs a comment"),
            ],
        ),
    ],
)
@pytest.mark.usefixtures("entered")
def test_submit_rejects_bad_answers_and_writes_nothing(
    db_url: str, answers: dict[str, tuple[Any, str]], expected: list[tuple[str, str]]
):
    aid = assignment_id(db_url, "S02", "S04", "superior")
    before = snapshot(db_url)

    with session_scope(db_url) as s, pytest.raises(InvalidInput) as err:
        submit_evaluation(s, aid, answers, CLERK, POLICY)

    assert [(p.field, p.message) for p in err.value.problems] == expected
    assert snapshot(db_url) == before


@pytest.mark.usefixtures("entered")
def test_submit_rejects_unknown_submitted_and_expired_assignments(db_url: str):
    done = assignment_id(db_url, "S04", "S04", "self")
    submit(db_url, done, answers_for("self"))
    late = assignment_id(db_url, "S05", "S05", "self")
    with session_scope(db_url) as s:
        s.get_one(RaterAssignment, late).state = "expired"
    before = snapshot(db_url)

    for aid, message in [
        (done, "already submitted"),
        (late, "the evaluation window closed"),
        (999_999, "no evaluation assignment 999999"),
    ]:
        with pytest.raises(InvalidInput, match=message):
            submit(db_url, aid, answers_for("self", score=2))
    assert snapshot(db_url) == before


@pytest.mark.usefixtures("entered")
def test_a_draft_may_be_partial_but_is_checked_as_a_submitted_form_is(db_url: str):
    aid = assignment_id(db_url, "S02", "S04", "superior")
    rater = Actor.person("S02")
    # Items left out, unscored, or at an extreme without its comment yet: a draft keeps them.
    partial = {"attitude": (5, ""), "teamwork": (None, "half written")}
    with session_scope(db_url) as s:
        save_draft(s, aid, partial, rater, POLICY)
    with session_scope(db_url) as s:
        assert load_draft(s, aid) == partial
    before = snapshot(db_url)

    with session_scope(db_url) as s, pytest.raises(InvalidInput) as err:
        save_draft(s, aid, {"attitude": (6, ""), "speed": (3, "")}, rater, POLICY)

    # The same problems, worded and coded the same, as submitting these answers gives.
    assert [(p.field, p.code, p.message) for p in err.value.problems] == [
        ("attitude", "bad_score", "attitude: score must be an integer from 1 to 5, got 6"),
        (
            "speed",
            "unknown_item",
            "speed is not an item for this rater (expected attitude, teamwork)",
        ),
    ]
    assert snapshot(db_url) == before


# ---------------------------------------------------------------- progress, close, reopen


def test_progress_and_close(db_url: str, entered: int):
    total = len(assignments(db_url))
    assert progress(db_url, entered) == Progress(0, total)
    submit(db_url, assignment_id(db_url, "S04", "S04", "self"), answers_for("self"))
    submit(db_url, assignment_id(db_url, "S02", "S04", "superior"), answers_for("superior"))
    assert progress(db_url, entered) == Progress(2, total)

    assert close(db_url, entered) == {"submitted": 2, "expired": total - 2}

    assert progress(db_url, entered) == Progress(2, 2)
    assert progress(db_url, entered).complete
    states = Counter(state for _, state, _ in assignments(db_url).values())
    assert states == {"submitted": 2, "expired": total - 2}
    with pytest.raises(InvalidInput, match="the evaluation window closed"):
        submit(db_url, assignment_id(db_url, "S05", "S05", "self"), answers_for("self"))


def test_reopen_sends_ratees_back_for_another_round(db_url: str, entered: int):
    self_id = assignment_id(db_url, "S04", "S04", "self")
    submit(db_url, self_id, answers_for("self", score=2))
    close(db_url, entered)
    s04 = {k: v for k, v in assignments(db_url).items() if k[1] == "S04"}

    with session_scope(db_url) as s:
        reopened = reopen_evaluations(s, entered, ["S04"], actor="committee:chair")

    after = assignments(db_url)
    assert reopened == len(s04)
    assert all(after[k][1:] == ("pending", 2) for k in s04)
    assert all(v[1] == "expired" for k, v in after.items() if k[1] != "S04")
    assert progress(db_url, entered) == Progress(0, len(s04))
    with session_scope(db_url) as s:  # the first round's scores stay until overwritten
        assert s.scalars(select(Evaluation.score)).all() == [2, 2]
    submit(db_url, self_id, answers_for("self", score=4))
    with session_scope(db_url) as s:
        assert s.scalars(select(Evaluation.score)).all() == [4, 4]
        event = s.scalars(
            select(AuditEvent).where(AuditEvent.action == "evaluation.reopened")
        ).one()
    assert (event.actor, event.after) == ("committee:chair", {"ratees": ["S04"], "assignments": 8})


def test_reopen_unknown_ratee_changes_nothing(db_url: str, entered: int):
    before = snapshot(db_url)
    with session_scope(db_url) as s, pytest.raises(InvalidInput) as err:
        reopen_evaluations(s, entered, ["S04", "NOBODY"], actor="committee:chair")
    assert [str(p) for p in err.value.problems] == [
        f"ratee_ids: NOBODY has no evaluations in cycle {entered}"
    ]
    assert snapshot(db_url) == before


# ---------------------------------------------------------------- paper forms


def write_forms(tmp_path: Path, rows: list[str]) -> Path:
    path = tmp_path / "forms.csv"
    path.write_text("\n".join(["rater_id,ratee_id,rater_type,item,score,comment", *rows]) + "\n")
    return path


def test_import_paper_forms(db_url: str, entered: int, tmp_path: Path):
    recipient = next(
        r for r, e, t in assignments(db_url) if e == "S04" and t == "service_recipient"
    )
    path = write_forms(
        tmp_path,
        [
            "S02,S04,superior,attitude,4,",
            f'{recipient},S04,service_recipient,attitude,5,"耐心,专业"',
            "S02,S04,superior,teamwork,1,不配合排班",
        ],
    )

    with session_scope(db_url) as s:
        assert import_evaluations_csv(s, entered, path, POLICY, actor=Actor.hr("hr:clerk")) == 2

    rows = assignments(db_url)
    assert rows[("S02", "S04", "superior")][1] == "submitted"
    assert rows[(recipient, "S04", "service_recipient")][1] == "submitted"
    with session_scope(db_url) as s:
        stored = {
            (a.rater_type, e.item): (e.score, e.comment)
            for e, a in s.execute(select(Evaluation, RaterAssignment).join(RaterAssignment))
        }
        actors = set(
            s.scalars(select(AuditEvent.actor).where(AuditEvent.action == "evaluation.submitted"))
        )
    assert stored == {
        ("superior", "attitude"): (4, ""),
        ("superior", "teamwork"): (1, "不配合排班"),
        ("service_recipient", "attitude"): (5, "耐心,专业"),
    }
    assert actors == {"hr:clerk"}


def test_import_reports_every_bad_row_and_writes_nothing(db_url: str, entered: int, tmp_path: Path):
    submit(db_url, assignment_id(db_url, "S05", "S05", "self"), answers_for("self"))
    before = snapshot(db_url)
    path = write_forms(
        tmp_path,
        [
            "S02,S04,superior,attitude,4,",  # 2: teamwork missing
            "S04,S04,self,attitude,6,",  # 3
            "S04,S04,self,teamwork,good,",  # 4
            "S03,S04,superior,attitude,4,",  # 5: S03 is not S04's superior
            "S05,S05,self,attitude,4,",  # 6: already submitted
            "S05,S05,self,teamwork,4,",
            "S02,S06,superior,attitude,5,",  # 8: comment required
            "S02,S06,superior,teamwork,3,",
            "S02,S06,superior,teamwork,3,",  # 10: duplicate
            "S02,S07,boss,attitude,3,",  # 11
            "S02,S08,superior,attitude,,",  # 12
        ],
    )

    with session_scope(db_url) as s, pytest.raises(InvalidInput) as err:
        import_evaluations_csv(s, entered, path, POLICY, actor=Actor.hr("hr:clerk"))

    assert [str(p) for p in err.value.problems] == [
        f"{path}:2: item: item teamwork is not answered",
        f"{path}:3: score: attitude: score must be an integer from 1 to 5, got 6",
        f"{path}:4: score: teamwork: score must be an integer from 1 to 5, got 'good'",
        f"{path}:5: rater_id: S03 has no superior evaluation of S04 in cycle {entered}",
        f"{path}:6: rater_id: S05 -> S05 (self): already submitted",
        f"{path}:8: comment: attitude: a score of 5 needs a comment",
        f"{path}:10: item: duplicate row for item teamwork (first on line 9)",
        f"{path}:11: rater_type: unknown rater type 'boss'; expected one of peer, self, "
        "service_recipient, superior, third_party",
        f"{path}:12: score: score is required",
    ]
    assert snapshot(db_url) == before


def test_import_needs_an_existing_cycle_and_rows(db_url: str, entered: int, tmp_path: Path):
    empty = write_forms(tmp_path, [])
    with session_scope(db_url) as s, pytest.raises(InvalidInput) as err:
        import_evaluations_csv(s, entered, empty, POLICY, actor=Actor.hr())
    assert [str(p) for p in err.value.problems] == [f"{empty}:2: no evaluations in the file"]
    with session_scope(db_url) as s, pytest.raises(InvalidInput, match="cycle: no cycle 42"):
        import_evaluations_csv(s, 42, empty, POLICY, actor=Actor.hr())


# ---------------------------------------------------------------- PostgreSQL


@pytest.mark.postgres
def test_enter_and_progress_on_postgres(pg_url: str, db_url: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PERFCYCLE_NOW", NOW.isoformat())
    cycle = build_cycle(pg_url)

    first = enter(pg_url, cycle)
    again = enter(pg_url, cycle)

    rows = assignments(pg_url)
    assert first == {"assignments_created": len(rows), "mails_enqueued": len({r[0] for r in rows})}
    assert again == {"assignments_created": 0, "mails_enqueued": 0}
    assert progress(pg_url, cycle) == Progress(0, len(rows))
    submit(pg_url, rows[("S04", "S04", "self")][0], answers_for("self"))
    assert progress(pg_url, cycle) == Progress(1, len(rows))
    sqlite_cycle = build_cycle(db_url)  # same org and cycle id: the same raters on both backends
    enter(db_url, sqlite_cycle)
    assert set(assignments(db_url)) == set(rows)
