"""Interview stage: scheduling, the manager's record, the employee's acknowledgement, close.

The builders at the top are shared with the improvement and appeal stage tests.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from perfcycle.core.db import session_scope
from perfcycle.core.errors import InvalidInput
from perfcycle.domain.access import Actor
from perfcycle.domain.models import (
    AuditEvent,
    Base,
    Cycle,
    Department,
    Employee,
    Interview,
    OutboxMessage,
    Participant,
    Result,
    StageInstance,
    StageName,
)
from perfcycle.domain.policy.schema import Policy
from perfcycle.domain.stages import interview
from perfcycle.domain.stages.base import Progress

OPENED = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
NOW = datetime(2026, 12, 10, 9, 0, tzinfo=UTC)
STAGE_DAYS = 15

# (id, manager, locale): boss has no manager; m1 is both a manager and interviewed.
PEOPLE = [
    ("boss", None, "en"),
    ("m1", "boss", "zh-CN"),
    ("e1", "m1", "en"),
    ("e2", "m1", "zh-CN"),
    ("e3", "boss", "en"),
]


def _name(zh: str, en: str) -> dict[str, str]:
    return {"zh-CN": zh, "en": en}


POLICY: dict[str, Any] = {
    "id": "test-policy",
    "title": _name("测试策略", "Test policy"),
    "department_types": ["external_service"],
    "grades": [
        {"id": "A", "name": _name("优秀", "Excellent"), "min": 90, "bonus_factor": 1.2},
        {"id": "B", "name": _name("良好", "Good"), "min": 75},
        {"id": "C", "name": _name("合格", "Adequate"), "min": 60},
        {"id": "D", "name": _name("不合格", "Unsatisfactory"), "min": 0, "bonus_factor": 0.85},
    ],
    "veto_cap": "C",
    "categories": [
        {"id": "result", "name": _name("结果", "Result"), "weight": 60},
        {"id": "process", "name": _name("过程", "Process"), "weight": 40},
    ],
    "indicators": [
        {
            "kind": "metric",
            "id": "csat",
            "name": _name("满意度", "Satisfaction"),
            "category": "result",
            "weight": 50,
            "metric": "satisfaction_pct",
            "rule": {"type": "linear_deduction", "target": 95, "per": 1, "points": 2},
        },
        {
            "kind": "metric",
            "id": "fcr",
            "name": _name("首次解决率", "First-contact resolution"),
            "category": "result",
            "weight": 50,
            "metric": "fcr_pct",
            "rule": {"type": "ratio", "target": 80},
        },
        {
            "kind": "rated",
            "id": "attitude",
            "name": _name("服务态度", "Service attitude"),
            "category": "process",
            "weight": 100,
            "rule": {"type": "bars"},
            "anchors": {n: {"zh-CN": f"等级{n}", "en": f"level {n}"} for n in range(1, 6)},
        },
    ],
    "raters": {"superior": {"weight": 100}},
    "stages": [{"name": s.value, "days": STAGE_DAYS} for s in StageName],
    "improvement": {"grades": ["C", "D"], "months": 3},
}


def make_policy(**changes: Any) -> Policy:
    return Policy.model_validate({**POLICY, **changes})


def build_cycle(db_url: str, stage_name: str) -> int:
    """The org of PEOPLE, one cycle with all of them as participants, and the stage open."""
    with session_scope(db_url) as s:
        s.add(Department(id="cs", name="Customer service", type="external_service"))
        for person_id, manager_id, locale in PEOPLE:
            s.add(
                Employee(
                    id=person_id,
                    name=person_id.upper(),
                    email=f"{person_id}@example.com",
                    department_id="cs",
                    manager_id=manager_id,
                    locale=locale,
                )
            )
            s.flush()
        cycle = Cycle(
            policy="test-policy",
            policy_digest="0" * 64,
            period="2026-Q4",
            period_start=date(2026, 10, 1),
            period_end=date(2026, 12, 31),
            scope_key="",
            start_date=date(2026, 10, 1),
            state="running",
            current_stage=stage_name,
            created_at=OPENED,
        )
        s.add(cycle)
        s.flush()
        for person_id, manager_id, _ in PEOPLE:
            s.add(
                Participant(
                    cycle_id=cycle.id,
                    employee_id=person_id,
                    department_id="cs",
                    manager_id=manager_id,
                )
            )
        s.add(
            StageInstance(
                cycle_id=cycle.id,
                name=stage_name,
                position=[n.value for n in StageName].index(stage_name),
                state="open",
                opened_at=OPENED,
                due_at=OPENED + timedelta(days=STAGE_DAYS),
                summary={},
            )
        )
        return cycle.id


def add_results(db_url: str, cycle_id: int, results: dict[str, tuple[str, dict[str, float]]]):
    """results: employee id -> (grade, indicator scores)."""
    with session_scope(db_url) as s:
        for employee_id, (grade, indicators) in results.items():
            s.add(
                Result(
                    cycle_id=cycle_id,
                    employee_id=employee_id,
                    indicators=indicators,
                    categories={},
                    total=sum(indicators.values()) / max(len(indicators), 1),
                    computed_grade=grade,
                    grade=grade,
                )
            )


def run_handler(db_url: str, handler: Any, method: str, cycle_id: int, policy: Policy) -> Any:
    with session_scope(db_url) as s:
        cycle = s.get_one(Cycle, cycle_id)
        stage = s.scalars(select(StageInstance).where(StageInstance.cycle_id == cycle_id)).one()
        return getattr(handler, method)(s, cycle, policy, stage)


def table_rows(db_url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, to prove a rejected call changed nothing."""
    with session_scope(db_url) as s:
        return {
            t.name: [tuple(r) for r in s.execute(select(t).order_by(*t.primary_key.columns))]
            for t in Base.metadata.sorted_tables
        }


def assert_rejected(db_url: str, action: Callable[[Session], object], *fields: str) -> str:
    """The call raises InvalidInput naming exactly `fields`, and even a commit changes nothing."""
    before = table_rows(db_url)
    with session_scope(db_url) as s, pytest.raises(InvalidInput) as info:
        action(s)
    assert table_rows(db_url) == before
    assert sorted(str(p.field) for p in info.value.problems) == sorted(fields)
    return str(info.value)


def outbox(db_url: str, template: str) -> list[OutboxMessage]:
    with session_scope(db_url) as s:
        return list(
            s.scalars(
                select(OutboxMessage)
                .where(OutboxMessage.template == template)
                .order_by(OutboxMessage.recipient_email, OutboxMessage.idempotency_key)
            )
        )


def audit_events(db_url: str, action: str) -> list[AuditEvent]:
    with session_scope(db_url) as s:
        return list(
            s.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id))
        )


# ---------------------------------------------------------------- interview tests


@pytest.fixture(autouse=True)
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERFCYCLE_NOW", NOW.isoformat())


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
    assert event.before is not None and event.before["state"] == "scheduled"
    assert event.after is not None and event.after["summary"] == "Missed SLA twice"
    [mail] = outbox(db_url, "interview_recorded")
    assert (mail.recipient_id, mail.context["interview_id"]) == ("e1", iid)


def test_manager_may_correct_a_held_interview_until_acknowledged(
    db_url: str, cycle_id: int, monkeypatch: pytest.MonkeyPatch
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


def test_record_rejects_wrong_actor_and_missing_summary(db_url: str, cycle_id: int) -> None:
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


def test_employee_acknowledges_a_held_interview(db_url: str, cycle_id: int) -> None:
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
