"""Builders for the stage and notification tests: a small organisation (PEOPLE) with one cycle
open at a chosen stage, its test policy, results, and probes of what the database holds."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import select
from sqlalchemy.orm import Session

from perfcycle.core.db import session_scope
from perfcycle.core.errors import InvalidInput
from perfcycle.core.settings import REPO_ROOT, get_settings
from perfcycle.domain.models import (
    AuditEvent,
    Base,
    Cycle,
    Department,
    Employee,
    OutboxMessage,
    Participant,
    Result,
    StageInstance,
    StageName,
)
from perfcycle.domain.policy.schema import Policy
from perfcycle.domain.stages.base import StageContext

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
        return getattr(handler, method)(StageContext(s, cycle, policy, stage))


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


# employee -> (grade, indicator scores): C and D get an improvement plan under POLICY, A none.
RESULTS = {
    "e1": ("C", {"csat": 40.0, "fcr": 70.0, "attitude": 55.0}),
    "e2": ("D", {"csat": 80.0, "fcr": 30.5, "attitude": 20.0}),
    "e3": ("A", {"csat": 99.0, "fcr": 95.0, "attitude": 100.0}),
    "boss": ("D", {}),
}


SHIPPED = sorted((REPO_ROOT / "policies").glob("*.yaml"))


def write_policies(
    folder: Path, monkeypatch: pytest.MonkeyPatch, edit: Callable[[dict[str, Any]], None]
) -> None:
    """The shipped policies, each edited; settings point at them."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in SHIPPED:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        edit(data)
        text = yaml.safe_dump(data, allow_unicode=True, sort_keys=False)
        (folder / path.name).write_text(text, encoding="utf-8")
    monkeypatch.setenv("PERFCYCLE_POLICIES_DIR", str(folder))
    get_settings.cache_clear()


def freeze(monkeypatch: pytest.MonkeyPatch, moment: datetime) -> None:
    """clock.now() is `moment` from here on, in this process (the portal's TestClient too)."""
    monkeypatch.setenv("PERFCYCLE_NOW", moment.isoformat())


def name_of(url: str, employee_id: str) -> str:
    with session_scope(url) as s:
        return s.get_one(Employee, employee_id).name
