"""Interview stage: scheduling, the manager's record, the employee's acknowledgement, close."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from perfcycle.core.db import session_scope
from perfcycle.domain.access import Actor
from perfcycle.domain.models import Interview
from perfcycle.domain.stages import interview
from perfcycle.domain.stages.base import Progress
from tests.support.factories import (
    NOW,
    OPENED,
    STAGE_DAYS,
    assert_rejected,
    audit_events,
    build_cycle,
    make_policy,
    outbox,
    run_handler,
    table_rows,
)

pytestmark = pytest.mark.usefixtures("frozen_clock")

# ---------------------------------------------------------------- interview tests


@pytest.fixture
def cycle_id(db_url: str) -> int:
    cid = build_cycle(db_url, "interview")
    run_handler(db_url, interview.Handler(), "enter", cid, make_policy())
    return cid


def interview_of(db_url: str, employee_id: str) -> Interview:
    with session_scope(db_url) as s:
        return s.scalars(select(Interview).where(Interview.employee_id == employee_id)).one()


def test_enter_schedules_an_interview_for_everyone_with_a_manager(db_url: str) -> None:
    cid = build_cycle(db_url, "interview")

    summary = run_handler(db_url, interview.Handler(), "enter", cid, make_policy())

    assert summary == {"interviews_created": 4, "mails_enqueued": 6}
    with session_scope(db_url) as s:
        rows = s.execute(
            select(Interview.employee_id, Interview.manager_id, Interview.state).order_by(
                Interview.employee_id
            )
        ).all()
    assert [tuple(r) for r in rows] == [
        ("e1", "m1", "scheduled"),
        ("e2", "m1", "scheduled"),
        ("e3", "boss", "scheduled"),
        ("m1", "boss", "scheduled"),
    ]
    [event] = audit_events(db_url, "interview.scheduled")
    assert event.after == {"interviews_created": 4, "employees": ["e1", "e2", "e3", "m1"]}


def test_enter_mails_each_employee_and_each_manager_once_with_their_list(db_url: str) -> None:
    cid = build_cycle(db_url, "interview")
    run_handler(db_url, interview.Handler(), "enter", cid, make_policy())

    mails = outbox(db_url, "interview_scheduled")
    by_role: dict[str, dict[str, Any]] = {}
    for m in mails:
        by_role[f"{m.recipient_id}:{m.context['role']}"] = m.context
    assert sorted(by_role) == [
        "boss:manager",
        "e1:employee",
        "e2:employee",
        "e3:employee",
        "m1:employee",
        "m1:manager",
    ]
    assert [i["employee_id"] for i in by_role["m1:manager"]["interviews"]] == ["e1", "e2"]
    assert [i["employee_id"] for i in by_role["boss:manager"]["interviews"]] == ["e3", "m1"]
    assert by_role["e1:employee"]["manager_name"] == "M1"
    assert by_role["e1:employee"]["due_at"] == (OPENED + timedelta(days=STAGE_DAYS)).isoformat()
    assert {m.locale for m in mails if m.recipient_id == "m1"} == {"zh-CN"}


def test_enter_again_creates_nothing(db_url: str, cycle_id: int) -> None:
    before = table_rows(db_url)

    summary = run_handler(db_url, interview.Handler(), "enter", cycle_id, make_policy())

    assert summary == {"interviews_created": 0, "mails_enqueued": 0}
    assert table_rows(db_url) == before


def test_manager_records_the_interview(db_url: str, cycle_id: int) -> None:
    iid = interview_of(db_url, "e1").id
    with session_scope(db_url) as s:
        interview.record_interview(
            s, iid, summary=" Missed SLA twice ", root_causes="Queue overload", actor=Actor.person(
                "m1"
            )
        )

    held = interview_of(db_url, "e1")
    assert (held.state, held.summary, held.root_causes) == (
        "held",
        "Missed SLA twice",
        "Queue overload",
    )
    assert held.held_at == NOW
    [event] = audit_events(db_url, "interview.recorded")
    assert (event.actor, event.subject, event.cycle_id) == ("m1", f"interview:{iid}", cycle_id)
    # The whole record before and after, times as ISO text: what the audit log shows.
    assert event.before == {
        "state": "scheduled",
        "summary": "",
        "root_causes": "",
        "held_at": None,
        "acknowledged_at": None,
    }
    assert event.after == {
        "state": "held",
        "summary": "Missed SLA twice",
        "root_causes": "Queue overload",
        "held_at": NOW.isoformat(),
        "acknowledged_at": None,
    }
    [mail] = outbox(db_url, "interview_recorded")
    assert (mail.recipient_id, mail.context["interview_id"]) == ("e1", iid)


@pytest.mark.usefixtures("cycle_id")
def test_manager_may_correct_a_held_interview_until_acknowledged(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    iid = interview_of(db_url, "e1").id
    with session_scope(db_url) as s:
        interview.record_interview(
            s, iid, summary="first", root_causes="", actor=Actor.person("m1")
        )
    monkeypatch.setenv("PERFCYCLE_NOW", (NOW + timedelta(hours=1)).isoformat())
    with session_scope(db_url) as s:
        interview.record_interview(
            s, iid, summary="second", root_causes="late", actor=Actor.person("m1")
        )

    corrected = interview_of(db_url, "e1")
    assert (corrected.summary, corrected.root_causes, corrected.held_at) == ("second", "late", NOW)
    [event] = audit_events(db_url, "interview.corrected")
    assert event.before is not None and event.before["summary"] == "first"
    assert len(outbox(db_url, "interview_recorded")) == 1


@pytest.mark.usefixtures("cycle_id")
def test_record_rejects_wrong_actor_and_missing_summary(db_url: str) -> None:
    iid = interview_of(db_url, "e1").id

    def record(actor: str, summary: str) -> Callable[[Session], object]:
        return lambda s: interview.record_interview(
            s, iid, summary=summary, root_causes="x", actor=Actor.person(actor)
        )

    message = assert_rejected(db_url, record("boss", "ok"), "actor")
    assert "manager (m1)" in message
    assert_rejected(db_url, record("e1", "ok"), "actor")
    assert_rejected(db_url, record("m1", "   "), "summary")
    assert_rejected(db_url, record("e2", ""), "actor", "summary")
    assert_rejected(
        db_url,
        lambda s: interview.record_interview(
            s, 9999, summary="x", root_causes="", actor=Actor.person("m1")
        ),
        "interview_id",
    )


@pytest.mark.usefixtures("cycle_id")
def test_employee_acknowledges_a_held_interview(db_url: str) -> None:
    iid = interview_of(db_url, "e2").id

    def acknowledge(actor: str) -> Callable[[Session], object]:
        return lambda s: interview.acknowledge_interview(s, iid, actor=Actor.person(actor))

    assert "only a held interview" in assert_rejected(db_url, acknowledge("e2"), "state")

    with session_scope(db_url) as s:
        interview.record_interview(
            s, iid, summary="talked", root_causes="", actor=Actor.person("m1")
        )
    assert_rejected(db_url, acknowledge("m1"), "actor")
    with session_scope(db_url) as s:
        interview.acknowledge_interview(s, iid, actor=Actor.person("e2"))

    done = interview_of(db_url, "e2")
    assert (done.state, done.acknowledged_at) == ("acknowledged", NOW)
    [event] = audit_events(db_url, "interview.acknowledged")
    assert event.actor == "e2"
    assert_rejected(db_url, acknowledge("e2"), "state")

    def record_again(s: Session) -> object:
        return interview.record_interview(
            s, iid, summary="rewrite", root_causes="", actor=Actor.person("m1")
        )

    assert "no longer be recorded" in assert_rejected(db_url, record_again, "state")


def test_progress_counts_acknowledged_interviews(db_url: str, cycle_id: int) -> None:
    policy = make_policy()
    handler = interview.Handler()
    assert run_handler(db_url, handler, "progress", cycle_id, policy) == Progress(0, 4)

    iid = interview_of(db_url, "e3").id
    with session_scope(db_url) as s:
        interview.record_interview(
            s, iid, summary="fine", root_causes="", actor=Actor.person("boss")
        )
    assert run_handler(db_url, handler, "progress", cycle_id, policy) == Progress(0, 4)
    with session_scope(db_url) as s:
        interview.acknowledge_interview(s, iid, actor=Actor.person("e3"))
    assert run_handler(db_url, handler, "progress", cycle_id, policy) == Progress(1, 4)


def test_close_marks_scheduled_interviews_missed_once(db_url: str, cycle_id: int) -> None:
    policy = make_policy()
    handler = interview.Handler()
    e1, e2 = interview_of(db_url, "e1").id, interview_of(db_url, "e2").id
    with session_scope(db_url) as s:
        interview.record_interview(s, e1, summary="a", root_causes="", actor=Actor.person("m1"))
        interview.record_interview(s, e2, summary="b", root_causes="", actor=Actor.person("m1"))
        interview.acknowledge_interview(s, e2, actor=Actor.person("e2"))

    summary = run_handler(db_url, handler, "close", cycle_id, policy)

    assert summary == {
        "scheduled": 0,
        "held": 1,
        "acknowledged": 1,
        "missed": 2,
        "marked_missed": 2,
    }
    assert interview_of(db_url, "m1").state == "missed"
    [event] = audit_events(db_url, "interview.missed")
    assert event.after == {"state": "missed", "employees": ["e3", "m1"]}
    before = table_rows(db_url)
    assert run_handler(db_url, handler, "close", cycle_id, policy)["marked_missed"] == 0
    assert table_rows(db_url) == before
    missed = interview_of(db_url, "e3").id
    assert_rejected(
        db_url,
        lambda s: interview.record_interview(
            s, missed, summary="x", root_causes="", actor=Actor.person("boss")
        ),
        "state",
    )
