"""Improvement-plan stage: plans for weak grades, updates, monthly check-ins, closing, lapsing."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from perfcycle.core.db import session_scope
from perfcycle.core.settings import get_settings
from perfcycle.domain.access import Actor
from perfcycle.domain.models import ImprovementPlan, PlanCheckin
from perfcycle.domain.stages import improvement
from perfcycle.domain.stages.base import Progress
from tests.support.factories import (
    NOW,
    RESULTS,
    add_results,
    assert_rejected,
    audit_events,
    build_cycle,
    make_policy,
    outbox,
    run_handler,
    table_rows,
)

pytestmark = pytest.mark.usefixtures("frozen_clock")

# The stage opens on 30 Nov 2026; three calendar months later has no 30th of February.
DEADLINE = date(2027, 2, 28)


@pytest.fixture
def cycle_id(db_url: str) -> int:
    cid = build_cycle(db_url, "improvement")
    add_results(db_url, cid, RESULTS)
    run_handler(db_url, improvement.Handler(), "enter", cid, make_policy())
    return cid


def plan_of(db_url: str, employee_id: str) -> ImprovementPlan:
    with session_scope(db_url) as s:
        query = select(ImprovementPlan).where(ImprovementPlan.employee_id == employee_id)
        return s.scalars(query).one()


def checkins(db_url: str) -> list[tuple[str, int, str, str]]:
    with session_scope(db_url) as s:
        rows = s.execute(
            select(
                PlanCheckin.month, PlanCheckin.progress, PlanCheckin.note, PlanCheckin.recorded_by
            ).order_by(PlanCheckin.month)
        )
        return [tuple(r) for r in rows]


@pytest.mark.parametrize(
    ("start", "months", "expected"),
    [
        (date(2026, 1, 31), 1, date(2026, 2, 28)),
        (date(2028, 1, 31), 1, date(2028, 2, 29)),
        (date(2026, 11, 30), 3, date(2027, 2, 28)),
        (date(2026, 12, 15), 12, date(2027, 12, 15)),
    ],
)
def test_deadline_adds_calendar_months(start: date, months: int, expected: date) -> None:
    assert improvement.add_months(start, months) == expected


def test_enter_creates_plans_for_the_policy_grades_owned_by_the_manager(db_url: str) -> None:
    cid = build_cycle(db_url, "improvement")
    add_results(db_url, cid, RESULTS)

    summary = run_handler(db_url, improvement.Handler(), "enter", cid, make_policy())

    # e3 is graded A, m1 has no result row: neither gets a plan.
    assert summary == {"plans_created": 3, "mails_enqueued": 6}
    with session_scope(db_url) as s:
        plans = {p.employee_id: p for p in s.scalars(select(ImprovementPlan))}
    assert sorted(plans) == ["boss", "e1", "e2"]
    assert {e: (p.owner_id, p.state, p.deadline, p.actions) for e, p in plans.items()} == {
        "boss": (None, "open", DEADLINE, []),
        "e1": ("m1", "open", DEADLINE, []),
        "e2": ("m1", "open", DEADLINE, []),
    }
    assert plans["e1"].goal == "Raise Satisfaction (scored 40.0) and Service attitude (scored 55.0)"
    assert plans["e2"].goal == "提升服务态度（当前得分 20.0）、首次解决率（当前得分 30.5）"
    assert plans["boss"].goal == "Raise overall performance"
    [event] = audit_events(db_url, "improvement.plans_created")
    assert event.after is not None and event.after["employees"] == ["boss", "e1", "e2"]


@pytest.mark.usefixtures("cycle_id")
def test_enter_mails_employee_and_owner_per_plan(db_url: str) -> None:
    mails = outbox(db_url, "improvement_plan_created")
    sent = sorted(
        (m.recipient_id or m.recipient_email, m.context["role"], m.context["employee_id"])
        for m in mails
    )
    # The boss's plan has no owner: HR coaches it, and hears of it now.
    assert sent == sorted(
        [
            ("boss", "employee", "boss"),
            ("e1", "employee", "e1"),
            ("e2", "employee", "e2"),
            ("m1", "owner", "e1"),
            ("m1", "owner", "e2"),
            (get_settings().hr_email, "owner", "boss"),
        ]
    )
    assert {m.context["deadline"] for m in mails} == {"2027-02-28"}


def test_enter_again_creates_nothing(db_url: str, cycle_id: int) -> None:
    before = table_rows(db_url)

    summary = run_handler(db_url, improvement.Handler(), "enter", cycle_id, make_policy())

    assert summary == {"plans_created": 0, "mails_enqueued": 0}
    assert table_rows(db_url) == before


def test_no_plans_means_the_stage_is_complete_at_once(db_url: str) -> None:
    cid = build_cycle(db_url, "improvement")
    add_results(db_url, cid, {"e3": RESULTS["e3"]})
    handler, policy = improvement.Handler(), make_policy()

    assert run_handler(db_url, handler, "enter", cid, policy) == {
        "plans_created": 0,
        "mails_enqueued": 0,
    }
    progress = run_handler(db_url, handler, "progress", cid, policy)
    assert progress == Progress(0, 0) and progress.complete


@pytest.mark.usefixtures("cycle_id")
def test_owner_and_employee_update_the_plan(db_url: str) -> None:
    pid = plan_of(db_url, "e1").id
    with session_scope(db_url) as s:
        improvement.update_plan(
            s,
            pid,
            goal=" Satisfaction back to 90 ",
            actions=[{"action": "Shadow a senior agent", "due": "2026-12-20"}],
            actor=Actor.person("e1"),
        )
    with session_scope(db_url) as s:
        improvement.update_plan(
            s,
            pid,
            goal="Satisfaction back to 92",
            actions=[
                {"action": "Shadow a senior agent", "due": date(2026, 12, 20)},
                {"action": "Complaint handling course", "due": "2027-02-28"},
            ],
            actor=Actor.person("m1"),
        )

    plan = plan_of(db_url, "e1")
    assert plan.goal == "Satisfaction back to 92"
    assert plan.actions == [
        {"action": "Shadow a senior agent", "due": "2026-12-20"},
        {"action": "Complaint handling course", "due": "2027-02-28"},
    ]
    events = audit_events(db_url, "improvement.plan_updated")
    assert [e.actor for e in events] == ["e1", "m1"]
    assert events[1].before is not None and events[1].before["goal"] == "Satisfaction back to 90"


@pytest.mark.usefixtures("cycle_id")
def test_update_plan_rejections_name_the_field(db_url: str) -> None:
    pid = plan_of(db_url, "e1").id

    def update(actor: str = "m1", goal: str = "g", actions: Any = ()) -> Callable[[Session], Any]:
        return lambda s: improvement.update_plan(
            s,
            pid,
            goal=goal,
            actions=list(actions) if isinstance(actions, tuple) else actions,
            actor=Actor.person(actor),
        )

    assert "owner or the employee (e1, m1)" in assert_rejected(db_url, update(actor="e2"), "actor")
    assert_rejected(db_url, update(goal=" "), "goal")
    assert_rejected(db_url, update(actions="do better"), "actions")
    message = assert_rejected(
        db_url,
        update(
            actions=(
                {"action": "ok", "due": "2026-12-31"},
                {"action": "", "due": "2026-12-31"},
                {"action": "x", "due": "31/12/2026"},
                {"action": "x", "due": "2027-03-01"},
                {"action": "x", "due": "2026-12-01", "owner": "m1"},
                "call customers",
            )
        ),
        "actions[1].action",
        "actions[2].due",
        "actions[3].due",
        "actions[4]",
        "actions[5]",
    )
    assert "2027-03-01 is after the plan's deadline 2027-02-28" in message


@pytest.mark.usefixtures("cycle_id")
def test_checkins_one_per_month_the_second_replaces_the_first(db_url: str) -> None:
    pid = plan_of(db_url, "e1").id
    with session_scope(db_url) as s:
        improvement.record_checkin(
            s, pid, month="2026-11", progress=10, note="started", actor=Actor.person("e1")
        )
        improvement.record_checkin(
            s, pid, month="2026-12", progress=30, note="", actor=Actor.person("m1")
        )
    with session_scope(db_url) as s:
        improvement.record_checkin(
            s, pid, month="2026-12", progress=45, note="better", actor=Actor.person("e1")
        )

    assert checkins(db_url) == [("2026-11", 10, "started", "e1"), ("2026-12", 45, "better", "e1")]
    [updated] = audit_events(db_url, "improvement.checkin_updated")
    assert updated.before is not None and updated.before["progress"] == 30
    assert updated.subject == f"improvement_plan:{pid}:checkin:2026-12"
    assert len(audit_events(db_url, "improvement.checkin_recorded")) == 2


@pytest.mark.usefixtures("cycle_id")
def test_checkin_rejections_name_the_field(db_url: str) -> None:
    pid = plan_of(db_url, "e1").id

    def checkin(month: str = "2026-12", progress: Any = 50, actor: str = "e1") -> Any:
        return lambda s: improvement.record_checkin(
            s, pid, month=month, progress=progress, note="", actor=Actor.person(actor)
        )

    assert_rejected(db_url, checkin(month="2026-13"), "month")
    assert_rejected(db_url, checkin(month="Dec 2026"), "month")
    assert "has not started yet" in assert_rejected(db_url, checkin(month="2027-01"), "month")
    assert "before the plan started" in assert_rejected(db_url, checkin(month="2026-10"), "month")
    assert_rejected(db_url, checkin(progress=101), "progress")
    assert_rejected(db_url, checkin(progress=-1), "progress")
    assert_rejected(db_url, checkin(progress=True), "progress")
    assert_rejected(db_url, checkin(progress=50.5), "progress")
    assert_rejected(db_url, checkin(actor="e2", progress=200), "actor", "progress")


@pytest.mark.usefixtures("cycle_id")
def test_owner_closes_the_plan_with_the_verified_effect(db_url: str) -> None:
    pid = plan_of(db_url, "e2").id

    def close(actor: str = "m1", effect: Any = True, outcome: str = "done") -> Any:
        return lambda s: improvement.close_plan(
            s, pid, effect_verified=effect, outcome=outcome, actor=Actor.person(actor)
        )

    assert "plan's owner (m1)" in assert_rejected(db_url, close(actor="e2"), "actor")
    assert_rejected(db_url, close(outcome=""), "outcome")
    assert_rejected(db_url, close(effect="yes"), "effect_verified")

    with session_scope(db_url) as s:
        close(outcome=" Satisfaction up from 80 to 91 ")(s)

    plan = plan_of(db_url, "e2")
    assert (plan.state, plan.effect_verified, plan.outcome, plan.closed_at) == (
        "closed",
        True,
        "Satisfaction up from 80 to 91",
        NOW,
    )
    [event] = audit_events(db_url, "improvement.plan_closed")
    assert event.actor == "m1" and event.after is not None and event.after["state"] == "closed"
    [mail] = outbox(db_url, "improvement_plan_closed")
    assert (mail.recipient_id, mail.context["effect_verified"]) == ("e2", True)
    assert_rejected(db_url, close(), "state")
    assert_rejected(
        db_url,
        lambda s: improvement.update_plan(s, pid, goal="g", actions=[], actor=Actor.person("e2")),
        "state",
    )


def test_progress_and_close_lapse_what_is_still_open(db_url: str, cycle_id: int) -> None:
    handler, policy = improvement.Handler(), make_policy()
    assert run_handler(db_url, handler, "progress", cycle_id, policy) == Progress(0, 3)
    with session_scope(db_url) as s:
        improvement.close_plan(
            s,
            plan_of(db_url, "e1").id,
            effect_verified=False,
            outcome="no change",
            actor=Actor.person("m1"),
        )
    assert run_handler(db_url, handler, "progress", cycle_id, policy) == Progress(1, 3)

    summary = run_handler(db_url, handler, "close", cycle_id, policy)

    assert summary == {"open": 0, "closed": 1, "lapsed": 2, "marked_lapsed": 2}
    assert plan_of(db_url, "e2").state == "lapsed"
    [event] = audit_events(db_url, "improvement.lapsed")
    assert event.after == {"state": "lapsed", "employees": ["boss", "e2"]}
    before = table_rows(db_url)
    assert run_handler(db_url, handler, "close", cycle_id, policy)["marked_lapsed"] == 0
    assert table_rows(db_url) == before
    lapsed = plan_of(db_url, "e2").id
    assert_rejected(
        db_url,
        lambda s: improvement.record_checkin(
            s, lapsed, month="2026-12", progress=5, note="", actor=Actor.person("e2")
        ),
        "state",
    )
