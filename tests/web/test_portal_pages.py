"""The portal pages people reach from their mails, driven through HTTP on a real demo cycle.

Each journey runs on SQLite and on PostgreSQL. It signs in with a real task link
(perfcycle.notifications.links.issue_link), reads the page, posts its form with the page's CSRF
token,
and checks both the page and the database.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text

from perfcycle.core.db import session_scope
from perfcycle.core.settings import Settings, get_settings
from perfcycle.devtools.devstack import pick_free_ports
from perfcycle.domain import engine
from perfcycle.domain.access import Actor
from perfcycle.domain.models import (
    AuditEvent,
    Employee,
    Evaluation,
    EvaluationDraft,
    Goal,
    OutboxMessage,
    Participant,
    RaterAssignment,
    TaskToken,
)
from perfcycle.domain.policy.snapshot import cycle_policy
from perfcycle.domain.stages.evaluation import items_for, submit_evaluation
from perfcycle.domain.stages.target_setting import submit_goals
from perfcycle.notifications import links, outbox, relay
from perfcycle.notifications.render import render
from perfcycle.notifications.vocabulary import stage_title
from tests.support import databases
from tests.support.cycle import (
    agree_goals_but_one,
    decide,
    full_answers,
    play_until_waiting_at,
    prepare_demo_org,
    run_until_wait,
)
from tests.support.factories import freeze, table_rows
from tests.support.portal import (
    PERIOD,
    POLICY,
    T0,
    at_evaluation,
    csrf_of,
    error_of,
    first_report,
    form_of,
    goal_states,
    grant,
    launch_at_t0,
    signed_in,
    start_cycle,
    state_of,
    t,
    use_policy,
)
from tests.support.smtp import Recorder, Server

# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, db_url: str) -> str:
    """Every journey here on SQLite and on PostgreSQL (its SQL differs: FILTER, SKIP LOCKED)."""
    return db_url if request.param == "sqlite" else str(request.getfixturevalue("pg_url"))


@contextmanager
def building(folder: Path) -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PERFCYCLE_HOME", str(folder))
        env.delenv("PERFCYCLE_POLICIES_DIR", raising=False)
        yield env
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def started_pg(
    tmp_path_factory: pytest.TempPathFactory, pg_template: str
) -> Iterator[databases.StartedCycle]:
    """started_cycle on PostgreSQL: a template database cloned per test."""
    folder = tmp_path_factory.mktemp("started-pg")
    name = databases.create_pg_database(pg_template)
    url = databases.PG_URL.format(name=name)
    try:
        with building(folder) as env:
            org = prepare_demo_org(url, folder)
            cycle_id = launch_at_t0(url, org, env)
            started = databases.StartedCycle(url, org, cycle_id, POLICY, PERIOD, T0)
        databases.release_pg(url)
        yield started
    finally:
        databases.drop_pg_database(name)


@pytest.fixture(scope="module")
def started_sqlite(started_cycle: databases.StartedCycle) -> databases.StartedCycle:
    return started_cycle


@pytest.fixture(scope="module")
def evaluating_sqlite(
    tmp_path_factory: pytest.TempPathFactory, started_cycle: databases.StartedCycle
) -> databases.StartedCycle:
    """started_cycle played on until it waits for the raters at evaluation."""
    folder = tmp_path_factory.mktemp("evaluating")
    with building(folder) as env:
        url = databases.sqlite_url(folder / "perfcycle.db")
        at_evaluation(url, databases.use_started(started_cycle, url, folder, env))
    return replace(started_cycle, url=url)


@pytest.fixture(scope="module")
def evaluating_pg(started_pg: databases.StartedCycle) -> Iterator[databases.StartedCycle]:
    """started_pg played on until it waits for the raters at evaluation."""
    name = databases.create_pg_database(databases.pg_name(started_pg.url))
    url = databases.PG_URL.format(name=name)
    try:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("PERFCYCLE_TICKETS_URL", started_pg.org.tickets_url)
            freeze(env, T0)
            get_settings.cache_clear()
            at_evaluation(url, started_pg.cycle_id)
        get_settings.cache_clear()
        databases.release_pg(url)
        yield replace(started_pg, url=url)
    finally:
        databases.drop_pg_database(name)


def use_state(
    request: pytest.FixtureRequest,
    db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    state: str,
) -> int:
    """Make this test's database (db_url) a copy of the module's `state`_sqlite or `state`_pg,
    set up as start_cycle leaves it; returns the cycle's id."""
    if db_url.startswith("sqlite"):
        started: databases.StartedCycle = request.getfixturevalue(f"{state}_sqlite")
        assert (started.policy, started.period, started.at) == (POLICY, PERIOD, T0)
        return databases.use_started(started, db_url, tmp_path, monkeypatch)
    started = request.getfixturevalue(f"{state}_pg")
    databases.replace_pg_database(db_url, databases.pg_name(started.url))
    tickets = databases.copy_sqlite(started.org.tickets_url, tmp_path / "tickets.db")
    monkeypatch.setenv("PERFCYCLE_TICKETS_URL", tickets)
    freeze(monkeypatch, T0)
    get_settings.cache_clear()
    return started.cycle_id


@pytest.fixture
def cycle(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Iterator[int]:
    """This test's database (db_url) holds a copy of a started cycle (start_cycle's)."""
    yield use_state(request, db_url, tmp_path, monkeypatch, "started")
    get_settings.cache_clear()


@pytest.fixture
def evaluating(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Iterator[int]:
    """Like `cycle`, played on until the raters are asked (at_evaluation); nobody answered."""
    yield use_state(request, db_url, tmp_path, monkeypatch, "evaluating")
    get_settings.cache_clear()


def approver_mails(url: str, cycle_id: int, manager: str) -> list[OutboxMessage]:
    with session_scope(url) as s:
        return list(
            s.scalars(
                select(OutboxMessage)
                .where(
                    OutboxMessage.cycle_id == cycle_id,
                    OutboxMessage.recipient_id == manager,
                    OutboxMessage.template == "goals_submitted",
                )
                .order_by(OutboxMessage.id)
            )
        )


def used_tokens(url: str, person: str, kind: str) -> int:
    with session_scope(url) as s:
        return (
            s.scalar(
                select(func.count())
                .select_from(TaskToken)
                .where(
                    TaskToken.person_id == person,
                    TaskToken.task_kind == kind,
                    TaskToken.used_at.is_not(None),
                )
            )
            or 0
        )


# ---------------------------------------------------------------- 1. goals


def goals_journey(url: str, cycle_id: int) -> None:
    employee, manager = first_report(url, cycle_id)
    me = signed_in(url, employee, cycle_id, "goals", "target_setting:1")
    page = me.get(f"/goals?cycle={cycle_id}")
    assert page.status_code == 200
    with session_scope(url) as s:
        policy = cycle_policy(engine.get_cycle(s, cycle_id))
        titles = s.scalars(
            select(Goal.title).where(Goal.cycle_id == cycle_id, Goal.employee_id == employee)
        ).all()
    assert len(titles) == len(policy.indicators)
    assert all(title in page.text for title in titles)
    for category in policy.categories:  # named in the reader's language, not by id
        assert f"<td>{category.name.get('zh-CN')}</td>" in page.text
        assert f"<td>{category.id}</td>" not in page.text
    assert t("goals.submit") in page.text

    response = me.post(
        "/goals/submit", data={"csrf_token": csrf_of(page.text), "cycle": str(cycle_id)}
    )
    assert response.status_code == 303
    assert goal_states(url, cycle_id, employee) == {("submitted", True, False)}
    assert used_tokens(url, employee, "goals") == 1
    # The manager is told at once, with a link to the approval page.
    [told] = approver_mails(url, cycle_id, manager)
    assert told.context["employee_id"] == employee and told.context["link"].startswith("http")
    with session_scope(url) as s:
        token = links.resolve(s, links.token_of(told.context["link"]), T0)
        assert token is not None and (token.person_id, token.task_kind) == (
            manager,
            "goals_approval",
        )

    boss = signed_in(url, manager, cycle_id, "goals_approval", "target_setting:1")
    page = boss.get(f"/goals?cycle={cycle_id}")
    assert f'id="sheet-{employee}"' in page.text
    form = {"csrf_token": csrf_of(page.text), "cycle": str(cycle_id), "employee": employee}

    refused = boss.post("/goals/review", data={**form, "decision": "return", "comment": " "})
    assert refused.status_code == 422
    assert t("problem.return_reason") in refused.text
    assert goal_states(url, cycle_id, employee) == {("submitted", True, False)}

    returned = boss.post("/goals/review", data={**form, "decision": "return", "comment": "再议"})
    assert returned.status_code == 303
    assert goal_states(url, cycle_id, employee) == {("proposed", False, False)}

    # The employee reads why, from whom, on the sheet they are to revise.
    page = me.get(f"/goals?cycle={cycle_id}")
    note = page.text.split('id="returned"')[1].split("</div>")[0]
    with session_scope(url) as s:
        manager_name = s.get_one(Employee, manager).name
    assert "再议" in note and manager_name in note
    again = me.post("/goals/submit", data={"csrf_token": csrf_of(page.text), "cycle": cycle_id})
    assert again.status_code == 303
    assert len(approver_mails(url, cycle_id, manager)) == 2  # signed again: told again
    approved = boss.post("/goals/review", data={**form, "decision": "approve"})
    assert approved.status_code == 303
    assert goal_states(url, cycle_id, employee) == {("agreed", True, True)}
    page = me.get(f"/goals?cycle={cycle_id}")
    assert t("goals.state.agreed") in page.text
    assert t("goals.not_signed") not in page.text.split('id="mine"')[1].split("</section>")[0]
    assert 'id="returned"' not in page.text  # the return is history once agreed
    # Switched to English, the policy's indicators are named in English (titles stay as signed).
    english = me.get(f"/goals?cycle={cycle_id}&lang=en").text.split('id="mine"')[1]
    for indicator in policy.indicators:
        assert f"{indicator.name.en}" in english.replace("&amp;", "&")
        assert indicator.name.zh_CN not in english


def test_goals_are_submitted_returned_and_agreed_by_both(db_url: str, cycle: int) -> None:
    goals_journey(db_url, cycle)


def test_hr_is_told_of_goals_signed_by_someone_without_a_manager(db_url: str, cycle: int) -> None:
    with session_scope(db_url) as s:
        head = s.scalars(
            select(Participant.employee_id).where(
                Participant.cycle_id == cycle, Participant.manager_id.is_(None)
            )
        ).first()
        assert head is not None
        submit_goals(s, cycle, head, actor=Actor.person(head))
    with session_scope(db_url) as s:
        [mail] = s.scalars(
            select(OutboxMessage).where(OutboxMessage.template == "goals_submitted")
        ).all()
    assert mail.recipient_email == get_settings().hr_email and mail.recipient_id is None
    assert mail.context["hr_stands_in"] is True and "link" not in mail.context
    for locale, says in (("en", "HR, as they have no manager"), ("zh-CN", "由人力资源部审批")):
        rendered = render(mail.template, locale, mail.context)
        assert says in rendered.text and mail.context["employee_name"] in rendered.subject


def test_an_hr_admin_lists_returns_and_approves_the_goals_of_someone_without_a_manager(
    db_url: str, cycle: int
) -> None:
    with session_scope(db_url) as s:
        head = s.scalars(
            select(Participant.employee_id).where(
                Participant.cycle_id == cycle, Participant.manager_id.is_(None)
            )
        ).first()
        assert head is not None
        submit_goals(s, cycle, head, actor=Actor.person(head))
    clerk, _ = first_report(db_url, cycle)
    hr = signed_in(db_url, clerk, cycle, "goals", "target_setting:1")
    page = hr.get(f"/goals?cycle={cycle}")
    assert f'id="sheet-{head}"' not in page.text  # not HR yet: not theirs to review
    form = {"csrf_token": csrf_of(page.text), "cycle": str(cycle), "employee": head}
    assert hr.post("/goals/review", data={**form, "decision": "approve"}).status_code == 403

    grant(db_url, clerk, "hr_admin")
    # The home page leads HR to the sheets it approves.
    assert f'id="place-team-{cycle}" href="/goals?cycle={cycle}"' in hr.get("/").text
    page = hr.get(f"/goals?cycle={cycle}")
    assert page.status_code == 200
    listed = page.text.split('id="standing_in"')[1]
    assert f'id="sheet-{head}"' in listed and t("goals.standing_in") in page.text
    returned = hr.post("/goals/review", data={**form, "decision": "return", "comment": "再议"})
    assert returned.status_code == 303
    assert goal_states(db_url, cycle, head) == {("proposed", False, False)}
    with session_scope(db_url) as s:
        submit_goals(s, cycle, head, actor=Actor.person(head))
    approved = hr.post("/goals/review", data={**form, "decision": "approve"})
    assert approved.status_code == 303
    assert goal_states(db_url, cycle, head) == {("agreed", True, True)}
    with session_scope(db_url) as s:
        actors = s.scalars(
            select(AuditEvent.actor).where(
                AuditEvent.action.in_(["goals.returned", "goals.agreed"]),
                AuditEvent.subject == f"cycle:{cycle}/employee:{head}",
            )
        ).all()
    assert actors == [clerk, clerk]  # the audit names the HR admin who signed


def test_only_the_manager_can_approve_and_a_tampered_form_changes_nothing(
    db_url: str, cycle: int
) -> None:
    employee, manager = first_report(db_url, cycle)
    me = signed_in(db_url, employee, cycle, "goals", "target_setting:1")
    page = me.get(f"/goals?cycle={cycle}")
    me.post("/goals/submit", data={"csrf_token": csrf_of(page.text), "cycle": str(cycle)})
    # The employee posts the manager's form for themself.
    form = {"csrf_token": csrf_of(page.text), "cycle": str(cycle), "employee": employee}
    response = me.post("/goals/review", data={**form, "decision": "approve"})
    assert response.status_code == 403
    assert t("problem.not_the_approver", manager=manager, employee=employee) in response.text
    forged = me.post("/goals/review", data={**form, "csrf_token": "x", "decision": "approve"})
    assert forged.status_code == 403
    assert goal_states(db_url, cycle, employee) == {("submitted", True, False)}


# ---------------------------------------------------------------- 2. evaluations


def pending_of(url: str, cycle_id: int) -> list[RaterAssignment]:
    with session_scope(url) as s:
        return list(
            s.scalars(
                select(RaterAssignment)
                .where(RaterAssignment.cycle_id == cycle_id, RaterAssignment.state == "pending")
                .order_by(RaterAssignment.id)
            )
        )


def saved_answers(url: str, assignment_id: int) -> int:
    with session_scope(url) as s:
        return (
            s.scalar(
                select(func.count())
                .select_from(Evaluation)
                .where(Evaluation.assignment_id == assignment_id)
            )
            or 0
        )


def test_a_rater_fills_the_anchored_form_with_required_comments_then_reads_it(
    db_url: str, evaluating: int
) -> None:
    cycle = evaluating
    mine = next(a for a in pending_of(db_url, cycle) if a.rater_type == "peer")
    client = signed_in(db_url, mine.rater_id, cycle, "evaluation", "evaluation:1")
    with session_scope(db_url) as s:
        policy = cycle_policy(engine.get_cycle(s, cycle))
        stage = engine.stage_instances(s, cycle)["evaluation"]
    items = items_for(policy, mine.rater_type)
    strict = next(i for i in items if 5 in i.comment_required_for)

    listing = client.get(f"/evaluations?cycle={cycle}")
    assert f'href="/evaluations/{mine.id}"' in listing.text
    form = client.get(f"/evaluations/{mine.id}")
    assert form.status_code == 200
    assert stage.due_at.strftime("%Y-%m-%d %H:%M UTC") in form.text
    for item in items:
        for level, anchor in item.anchors.items():
            assert f'name="score.{item.id}" value="{level}"' in form.text
            assert anchor.zh_CN in form.text
    token = csrf_of(form.text)

    answers: dict[str, tuple[int | str, str]] = {i.id: (3, "") for i in items}
    missing_comment = client.post(
        f"/evaluations/{mine.id}", data=form_of({**answers, strict.id: (5, "")}, token)
    )
    assert missing_comment.status_code == 422
    # Said next to the item, in the rater's language.
    assert t("problem.comment_needed", score=5) in error_of(missing_comment.text, strict.id)
    out_of_range = client.post(
        f"/evaluations/{mine.id}", data=form_of({**answers, strict.id: (9, "")}, token)
    )
    assert out_of_range.status_code == 422
    assert t("problem.bad_score", score=9) in error_of(out_of_range.text, strict.id)
    tampered = client.post(
        f"/evaluations/{mine.id}", data=form_of({**answers, "made_up": (3, "")}, token)
    )
    assert tampered.status_code == 422
    assert t("problem.unknown_item", item="made_up") in tampered.text
    assert (saved_answers(db_url, mine.id), state_of(db_url, mine.id)) == (0, "pending")

    done = client.post(
        f"/evaluations/{mine.id}", data=form_of({**answers, strict.id: (5, "热情周到")}, token)
    )
    assert done.status_code == 303
    assert (saved_answers(db_url, mine.id), state_of(db_url, mine.id)) == (len(items), "submitted")
    after = client.get(f"/evaluations/{mine.id}")
    assert "热情周到" in after.text
    assert " disabled>" in after.text and t("eval.submit") not in after.text
    twice = client.post(f"/evaluations/{mine.id}", data=form_of(answers, token))
    assert twice.status_code == 409


def test_a_rater_cannot_open_or_submit_another_raters_form(db_url: str, evaluating: int) -> None:
    cycle = evaluating
    pending = pending_of(db_url, cycle)
    mine = pending[0]
    theirs = next(a for a in pending if a.rater_id != mine.rater_id)
    client = signed_in(db_url, mine.rater_id, cycle, "evaluation", "evaluation:1")
    assert client.get(f"/evaluations/{theirs.id}").status_code == 403
    token = csrf_of(client.get(f"/evaluations/{mine.id}").text)
    with session_scope(db_url) as s:
        answers = full_answers(s, theirs)
    response = client.post(f"/evaluations/{theirs.id}", data=form_of(dict(answers), token))
    assert response.status_code == 403
    assert state_of(db_url, theirs.id) == "pending"
    assert f"/evaluations/{theirs.id}" not in client.get(f"/evaluations?cycle={cycle}").text


def test_a_submission_after_the_deadline_is_refused_and_changes_nothing(
    db_url: str, evaluating: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    cycle = evaluating
    mine = pending_of(db_url, cycle)[0]
    with session_scope(db_url) as s:
        answers = full_answers(s, mine)
        due = engine.stage_instances(s, cycle)["evaluation"].due_at
    # The rater opens the form an hour before the deadline and posts it two hours later.
    freeze(monkeypatch, due - timedelta(hours=1))
    client = signed_in(db_url, mine.rater_id, cycle, "evaluation", "evaluation:1")
    token = csrf_of(client.get(f"/evaluations/{mine.id}").text)
    freeze(monkeypatch, due + timedelta(hours=1))
    response = client.post(f"/evaluations/{mine.id}", data=form_of(dict(answers), token))
    assert response.status_code == 409
    assert stage_title("evaluation", "zh-CN") in response.text
    assert due.strftime("%Y-%m-%d %H:%M") in response.text
    assert (saved_answers(db_url, mine.id), state_of(db_url, mine.id)) == (0, "pending")


def test_goals_after_the_deadline_are_refused_and_change_nothing(
    db_url: str, cycle: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    employee, manager = first_report(db_url, cycle)
    with session_scope(db_url) as s:
        due = engine.stage_instances(s, cycle)["target_setting"].due_at
    freeze(monkeypatch, due - timedelta(hours=1))
    me = signed_in(db_url, employee, cycle, "goals", "target_setting:1")
    token = csrf_of(me.get(f"/goals?cycle={cycle}").text)
    freeze(monkeypatch, due + timedelta(minutes=1))
    before = table_rows(db_url)
    goal = {"title": "Answer the backlog", "measure": "tickets older than 7 days",
            "target": "0", "deadline": "2026-12-20", "weight": "6"}
    for path, data in [
        ("/goals/submit", {"csrf_token": token, "cycle": str(cycle)}),
        ("/goals/edit", {"csrf_token": token, "cycle": str(cycle),
                         **{f"personal.0.{k}": v for k, v in goal.items()}}),
    ]:
        response = me.post(path, data=data)
        assert response.status_code == 409, (path, response.text)
        assert stage_title("target_setting", "zh-CN") in response.text
    assert table_rows(db_url) == before
    page = me.get(f"/goals?cycle={cycle}")
    assert t("goals.submit") not in page.text  # nothing offered that would be refused


def test_the_last_submission_tries_to_resume_the_flow_and_is_saved_without_prefect(
    db_url: str, evaluating: int, caplog: pytest.LogCaptureFixture
) -> None:
    cycle = evaluating
    *others, last = pending_of(db_url, cycle)
    client = signed_in(db_url, last.rater_id, cycle, "evaluation", "evaluation:1")
    token = csrf_of(client.get(f"/evaluations/{last.id}").text)
    with session_scope(db_url) as s:
        policy = cycle_policy(engine.get_cycle(s, cycle))
        for a in others:
            answers = full_answers(s, a)
            submit_evaluation(s, a.id, answers, Actor.person(a.rater_id), policy)
        mine = full_answers(s, last)
    with caplog.at_level(logging.INFO, logger="perfcycle.web.deps"):
        response = client.post(f"/evaluations/{last.id}", data=form_of(dict(mine), token))
    assert response.status_code == 303
    assert state_of(db_url, last.id) == "submitted"
    # The demo flow run id is no Prefect run: resuming fails, is logged, the answer stays saved.
    assert "could not resume flow run run-1" in caplog.text
    with session_scope(db_url) as s:
        assert engine.resume_reason(s, engine.get_cycle(s, cycle)) == "complete"


def test_the_last_goal_approval_tries_to_resume_the_flow_and_is_saved_without_prefect(
    db_url: str, cycle: int, caplog: pytest.LogCaptureFixture
) -> None:
    with session_scope(db_url) as s:
        employee, manager = agree_goals_but_one(s, cycle)
    client = signed_in(db_url, manager, cycle, "goals_approval", "target_setting:1")
    page = client.get(f"/goals?cycle={cycle}")
    form = {"csrf_token": csrf_of(page.text), "cycle": str(cycle), "employee": employee}
    with caplog.at_level(logging.INFO, logger="perfcycle.web.deps"):
        response = client.post("/goals/review", data={**form, "decision": "approve"})
    assert response.status_code == 303
    assert goal_states(db_url, cycle, employee) == {("agreed", True, True)}
    # The demo flow run id is no Prefect run: resuming fails, is logged, the approval stays.
    assert "could not resume flow run run-1" in caplog.text
    with session_scope(db_url) as s:
        assert engine.resume_reason(s, engine.get_cycle(s, cycle)) == "complete"


def test_an_approval_that_leaves_sheets_open_does_not_resume(
    db_url: str, cycle: int, caplog: pytest.LogCaptureFixture
) -> None:
    employee, manager = first_report(db_url, cycle)
    with session_scope(db_url) as s:
        submit_goals(s, cycle, employee, actor=Actor.person(employee))
    client = signed_in(db_url, manager, cycle, "goals_approval", "target_setting:1")
    page = client.get(f"/goals?cycle={cycle}")
    form = {"csrf_token": csrf_of(page.text), "cycle": str(cycle), "employee": employee}
    with caplog.at_level(logging.INFO, logger="perfcycle.web.deps"):
        assert client.post("/goals/review", data={**form, "decision": "approve"}).status_code == 303
    assert "resume" not in caplog.text


# ---------------------------------------------------------------- 3. transparency


def test_the_transparency_page_shows_evidence_scores_and_only_big_enough_rater_groups(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_policy(tmp_path / "policies", monkeypatch, {"service_recipient": 3})
    cycle_id = start_cycle(db_url, tmp_path, monkeypatch)
    at_evaluation(db_url, cycle_id)
    pending = pending_of(db_url, cycle_id)
    ratees = sorted({a.ratee_id for a in pending})
    full, short = ratees[0], ratees[1]
    # `short` gets 2 of its 3 service-recipient answers; everyone else answers everything.
    skipped = next(
        a for a in pending if a.ratee_id == short and a.rater_type == "service_recipient"
    )
    with session_scope(db_url) as s:
        policy = cycle_policy(engine.get_cycle(s, cycle_id))
        for a in pending:
            if a.id != skipped.id:
                submit_evaluation(
                    s, a.id, full_answers(s, a), Actor.person(a.rater_id), policy
                )
        due = engine.stage_instances(s, cycle_id)["evaluation"].due_at
    before = signed_in(db_url, full, cycle_id, "results", f"cycle:{cycle_id}")
    page = before.get(f"/me?cycle={cycle_id}")
    assert t("me.not_released") in page.text and 'id="raters"' not in page.text

    # Past the deadline and its one extension the stage closes; calibration approves.
    freeze(monkeypatch, due + timedelta(days=1))
    run_until_wait(db_url, cycle_id)
    freeze(monkeypatch, due + timedelta(days=7))
    assert play_until_waiting_at(db_url, cycle_id, "calibration").next == "approval"
    decide(db_url, cycle_id, decision="approve", approver="committee")
    run_until_wait(db_url, cycle_id)

    shown = signed_in(db_url, full, cycle_id, "results", f"cycle:{cycle_id}").get(
        f"/me?cycle={cycle_id}"
    )
    assert shown.status_code == 200
    group = shown.text.split('id="group-service_recipient"')[1].split("</article>")[0]
    assert t("me.answered", n=3) in group and 'class="mean">4.00' in group
    assert t("me.too_few") not in group
    # One self-assessment is under the threshold, but it is the ratee's own: shown.
    own = shown.text.split('id="group-self"')[1].split("</article>")[0]
    assert t("me.answered", n=1) in own and 'class="mean">4.00' in own
    peers = shown.text.split('id="group-peer"')[1].split("</article>")[0]
    assert t("me.too_few") in peers and 'class="mean"' not in peers
    with session_scope(db_url) as s:
        result = s.execute(
            text("SELECT grade FROM results WHERE cycle_id = :c AND employee_id = :e"),
            {"c": cycle_id, "e": full},
        ).scalar_one()
        metric, source = s.execute(
            text(
                "SELECT metric, source FROM metric_values WHERE cycle_id = :c AND employee_id = :e"
            ),
            {"c": cycle_id, "e": full},
        ).first() or ("", "")
    assert t("me.grade", grade=result) in shown.text
    assert f'id="metric-{metric}"' in shown.text and source in shown.text
    assert "<svg" in shown.text and "<rect" in shown.text

    hidden = signed_in(db_url, short, cycle_id, "results", f"cycle:{cycle_id}").get(
        f"/me?cycle={cycle_id}"
    )
    group = hidden.text.split('id="group-service_recipient"')[1].split("</article>")[0]
    assert t("me.answered", n=2) in group and t("me.too_few") in group
    assert 'class="mean"' not in group


def test_the_transparency_page_is_only_about_the_signed_in_person(db_url: str, cycle: int) -> None:
    employee, manager = first_report(db_url, cycle)
    client = signed_in(db_url, employee, cycle, "goals", "target_setting:1")
    page = client.get(f"/me?cycle={cycle}")
    assert page.status_code == 200
    with session_scope(db_url) as s:
        mine = s.scalars(
            select(Goal.title).where(Goal.cycle_id == cycle, Goal.employee_id == employee)
        ).first()
    assert mine is not None and mine in page.text
    assert client.get("/me?cycle=999").status_code == 404


# ---------------------------------------------------------------- 4. HR progress


def test_hr_sees_progress_by_department_and_overdue_people_and_reminds_them(
    db_url: str, cycle: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    employee, _ = first_report(db_url, cycle)
    grant(db_url, "E0001", "hr_admin")
    hr = signed_in(db_url, "E0001", cycle, "goals", "target_setting:1")
    page = hr.get(f"/hr/cycles/{cycle}")
    assert page.status_code == 200
    with session_scope(db_url) as s:
        per_department = dict(
            s.execute(
                select(Participant.department_id, func.count())
                .where(Participant.cycle_id == cycle)
                .group_by(Participant.department_id)
            )
            .tuples()
            .all()
        )
        due = engine.stage_instances(s, cycle)["target_setting"].due_at
        total = sum(per_department.values())
    assert re.search(rf'id="stage-target_setting".*?class="done">0/{total}<', page.text, re.S)
    stage_row = page.text.split('id="stage-target_setting"')[1].split("</tr>")[0]
    assert stage_title("target_setting", "zh-CN") in stage_row
    assert t("hr.stage_state.open") in stage_row
    for department, count in per_department.items():
        row = page.text.split(f'id="stage-target_setting-{department}"')[1].split("</tr>")[0]
        assert f">0/{count}<" in row
    assert 'href="http://127.0.0.1:4200/runs/flow-run/run-1"' in page.text
    assert t("hr.no_overdue") in page.text

    freeze(monkeypatch, due + timedelta(hours=1))
    hr = signed_in(db_url, "E0001", cycle, "goals", "target_setting:1")
    page = hr.get(f"/hr/cycles/{cycle}")
    assert f'data-person="{employee}"' in page.text
    response = hr.post(f"/hr/cycles/{cycle}/remind", data={"csrf_token": csrf_of(page.text)})
    assert response.status_code == 303
    with session_scope(db_url) as s:
        reminders = s.scalars(
            select(OutboxMessage).where(OutboxMessage.template == "reminder")
        ).all()
    # Nobody has signed yet: every participant has goals to submit, no manager has any to approve.
    assert len(reminders) == total
    assert {m.recipient_id for m in reminders} >= {employee}
    assert all(m.context["tasks"][0]["link"].startswith("http") for m in reminders)
    # Every one of them renders (StrictUndefined): a reminder HR sends must reach the inbox.
    for m in reminders:
        rendered = render(m.template, m.locale, m.context)
        assert rendered.text and rendered.html and rendered.subject
    port = pick_free_ports(1)[0]
    recorder = Recorder()
    with Server(recorder, port):
        report = relay.relay_until_idle(
            db_url, settings=Settings(smtp_host="127.0.0.1", smtp_port=port)
        )
    assert report.failed == 0
    delivered_to = {str(message["To"]) for message in recorder.messages}
    assert {m.recipient_email for m in reminders} <= delivered_to
    again = hr.post(f"/hr/cycles/{cycle}/remind", data={"csrf_token": csrf_of(page.text)})
    assert again.headers["location"].endswith("reminded=0")
    with session_scope(db_url) as s:
        queued = s.scalar(
            select(func.count())
            .select_from(OutboxMessage)
            .where(OutboxMessage.template == "reminder")
        )
    assert queued == len(reminders)


def test_the_hr_pages_are_for_hr_admins_only(db_url: str, cycle: int) -> None:
    employee, _ = first_report(db_url, cycle)
    client = signed_in(db_url, employee, cycle, "goals", "target_setting:1")
    page = client.get(f"/hr/cycles/{cycle}")
    assert page.status_code == 403
    response = client.post(
        f"/hr/cycles/{cycle}/remind",
        data={"csrf_token": csrf_of(client.get(f"/goals?cycle={cycle}").text)},
    )
    assert response.status_code == 403
    with session_scope(db_url) as s:
        assert not s.scalars(
            select(OutboxMessage).where(OutboxMessage.template == "reminder")
        ).all()


# ---------------------------------------------------------------- 5. audit


def test_the_auditor_filters_the_log_and_sees_the_chain_verified_or_broken(
    db_url: str, cycle: int
) -> None:
    grant(db_url, "E0002", "auditor")
    client = signed_in(db_url, "E0002", cycle, "goals", "target_setting:1")
    page = client.get("/audit")
    assert page.status_code == 200
    with session_scope(db_url) as s:
        total = s.scalar(select(func.count()).select_from(AuditEvent)) or 0
    assert t("audit.chain_ok", n=total) in page.text
    only = client.get(f"/audit?cycle={cycle}&action=goals.proposed")
    actions = re.findall(r'data-action="([^"]+)"', only.text)
    assert actions == ["goals.proposed"]
    with session_scope(db_url) as s:
        submit_goals(s, cycle, "E0002", actor=Actor.person("E0002"))
    by_person = client.get("/audit?person=E0002")
    assert re.findall(r'data-action="([^"]+)"', by_person.text) == ["goals.submitted"]
    # A wildcard typed into the filter is a character, not "any": E000_ is nobody.
    assert re.findall(r'data-action="([^"]+)"', client.get("/audit?person=E000_").text) == []
    assert re.findall(r'data-action="([^"]+)"', client.get("/audit?person=%25").text) == []

    with session_scope(db_url) as s:
        # Someone with direct database access gets past the append-only trigger.
        if db_url.startswith("postgresql"):
            s.execute(text("DROP TRIGGER audit_events_no_update_delete ON audit_events"))
        else:
            s.execute(text("DROP TRIGGER audit_events_no_update"))
        s.execute(text("UPDATE audit_events SET actor = 'mallory' WHERE id = 2"))
    broken = client.get("/audit")
    assert t("audit.chain_broken", id=2, problem="content does not match its hash (altered)") in (
        broken.text.replace("&#39;", "'")
    )
    assert client.get("/audit?cycle=abc").status_code == 400


def test_the_audit_log_is_closed_to_people_without_the_role(db_url: str, cycle: int) -> None:
    employee, _ = first_report(db_url, cycle)
    client = signed_in(db_url, employee, cycle, "goals", "target_setting:1")
    assert client.get("/audit").status_code == 403


def draft_of(url: str, assignment_id: int) -> dict[str, Any] | None:
    with session_scope(url) as s:
        draft = s.scalar(select(EvaluationDraft).where(
            EvaluationDraft.assignment_id == assignment_id))
        return None if draft is None else dict(draft.answers)


def test_a_rater_saves_a_draft_comes_back_to_it_and_submitting_clears_it(
    db_url: str, evaluating: int
) -> None:
    cycle = evaluating
    mine = next(a for a in pending_of(db_url, cycle) if a.rater_type == "peer")
    client = signed_in(db_url, mine.rater_id, cycle, "evaluation", "evaluation:1")
    with session_scope(db_url) as s:
        policy = cycle_policy(engine.get_cycle(s, cycle))
    items = items_for(policy, mine.rater_type)
    first, second = items[0], items[1]
    token = csrf_of(client.get(f"/evaluations/{mine.id}").text)

    partial = {"csrf_token": token, "action": "draft", f"score.{first.id}": "4",
               f"comment.{second.id}": "还没想好分数"}
    saved = client.post(f"/evaluations/{mine.id}", data=partial)
    assert saved.status_code == 303 and saved.headers["location"].endswith("?draft=saved")
    assert draft_of(db_url, mine.id) == {
        first.id: {"score": 4, "comment": ""},
        second.id: {"score": None, "comment": "还没想好分数"},
    }
    assert (saved_answers(db_url, mine.id), state_of(db_url, mine.id)) == (0, "pending")

    again = client.get(f"/evaluations/{mine.id}?draft=saved")
    assert t("eval.draft_saved") in again.text
    assert f'name="score.{first.id}" value="4" checked' in again.text
    assert "还没想好分数" in again.text

    bad = client.post(f"/evaluations/{mine.id}",
                      data={**partial, f"score.{first.id}": "7"})
    assert bad.status_code == 422
    assert draft_of(db_url, mine.id) == {
        first.id: {"score": 4, "comment": ""},
        second.id: {"score": None, "comment": "还没想好分数"},
    }

    answers: dict[str, tuple[int | str, str]] = {i.id: (3, "") for i in items}
    done = client.post(f"/evaluations/{mine.id}", data=form_of(answers, token))
    assert done.status_code == 303
    assert state_of(db_url, mine.id) == "submitted"
    assert draft_of(db_url, mine.id) is None


def test_hr_sees_the_cycles_undelivered_mail_with_the_reply_and_sends_it_again(
    db_url: str, cycle: int
) -> None:
    employee, _ = first_report(db_url, cycle)
    with session_scope(db_url) as s:
        mine = s.scalars(
            select(OutboxMessage).where(
                OutboxMessage.cycle_id == cycle, OutboxMessage.recipient_id == employee
            )
        ).one()
        gone = {mine.recipient_email, "visitor@example.com"}
        # A sign-in mail belongs to no cycle: it is not this cycle's to list or retry.
        outbox.enqueue(
            s,
            [
                outbox.Mail(
                    None,
                    None,
                    "visitor@example.com",
                    "en",
                    "sign_in_link",
                    "x",
                    {"name": "Visitor", "hours": 4, "link": "http://127.0.0.1:8700/t/x"},
                )
            ],
        )
    reply = "550 5.1.1 Recipient address rejected: mailbox unavailable"
    port = pick_free_ports(1)[0]
    with Server(Recorder(rcpt=lambda a: reply if a in gone else None), port):
        report = relay.relay_until_idle(
            db_url, settings=Settings(smtp_host="127.0.0.1", smtp_port=port)
        )
    assert report.failed == 2
    with session_scope(db_url) as s:
        failed = {m.recipient_email: m.id for m in s.scalars(
            select(OutboxMessage).where(OutboxMessage.state == "failed")
        )}
        sent = s.scalars(
            select(OutboxMessage.id).where(
                OutboxMessage.cycle_id == cycle, OutboxMessage.state == "sent"
            )
        ).first()
    assert set(failed) == gone and sent is not None
    theirs, visitor = failed[mine.recipient_email], failed["visitor@example.com"]

    grant(db_url, "E0001", "hr_admin")
    hr = signed_in(db_url, "E0001", cycle, "goals", "target_setting:1")
    page = hr.get(f"/hr/cycles/{cycle}?lang=en")
    section = page.text.split('id="mail"')[1].split("</section>")[0]
    assert "1 undelivered" in section
    row_html = section.split(f'id="mail-{theirs}"')[1].split("</tr>")[0]
    assert mine.recipient_email in row_html and "goals_to_agree" in row_html
    assert reply in row_html
    assert f'id="mail-{visitor}"' not in page.text
    token = csrf_of(page.text)

    def states() -> dict[int, str]:
        with session_scope(db_url) as s:
            ids = [theirs, visitor, sent]
            return dict(
                s.execute(
                    select(OutboxMessage.id, OutboxMessage.state).where(OutboxMessage.id.in_(ids))
                ).tuples().all()
            )

    before = states()
    # Another cycle's (here: no cycle's) mail, a delivered mail, nothing chosen, a forged id:
    # refused, and nothing changes.
    attempts: list[tuple[list[int | str], int]] = [
        ([theirs, visitor], 422), ([theirs, sent], 422), ([], 422), (["x"], 400)
    ]
    for ids, status_code in attempts:
        response = hr.post(
            f"/hr/cycles/{cycle}/mail/retry",
            data={"csrf_token": token, "message": [str(i) for i in ids]},
        )
        assert response.status_code == status_code, (ids, response.text)
        assert states() == before
    employee_client = signed_in(db_url, employee, cycle, "goals", "target_setting:1")
    forbidden = employee_client.post(
        f"/hr/cycles/{cycle}/mail/retry",
        data={
            "csrf_token": csrf_of(employee_client.get(f"/goals?cycle={cycle}").text),
            "message": str(theirs),
        },
    )
    assert forbidden.status_code == 403 and states() == before

    response = hr.post(
        f"/hr/cycles/{cycle}/mail/retry", data={"csrf_token": token, "message": str(theirs)}
    )
    assert response.status_code == 303
    assert response.headers["location"] == f"/hr/cycles/{cycle}?retried=1"
    assert states() == {**before, theirs: "pending"}
    with session_scope(db_url) as s:
        event = s.scalars(
            select(AuditEvent).where(AuditEvent.action == "outbox.retried")
        ).one()
        assert (event.actor, event.subject) == ("E0001", f"outbox:{theirs}")
    page = hr.get(response.headers["location"] + "&lang=en")
    assert "1 mails re-queued" in page.text and f'id="mail-{theirs}"' not in page.text

    # Mail of no cycle (the sign-in link; reminder digests too) is on the cycles page.
    listing = hr.get("/hr/cycles?lang=en").text
    no_cycle = listing.split('id="mail"')[1].split("</section>")[0]
    assert f'id="mail-{visitor}"' in no_cycle and reply in no_cycle
    assert f'id="mail-{theirs}"' not in listing
    token = csrf_of(listing)
    wrong = hr.post("/hr/mail/retry", data={"csrf_token": token, "message": str(sent)})
    assert wrong.status_code == 422 and states()[visitor] == "failed"
    again = hr.post("/hr/mail/retry", data={"csrf_token": token, "message": str(visitor)})
    assert (again.status_code, again.headers["location"]) == (303, "/hr/cycles?retried=1")
    assert states()[visitor] == "pending"

    # The addresses were fixed: the next relay run delivers both.
    gone.clear()
    recorder = Recorder()
    with Server(recorder, port):
        relay.relay_until_idle(db_url, settings=Settings(smtp_host="127.0.0.1", smtp_port=port))
    assert sorted(m["To"] for m in recorder.messages) == sorted(
        [mine.recipient_email, "visitor@example.com"]
    )
