"""Launching a cycle: validate what HR asked for, then create the cycle once.

The natural key is (policy, period, scope): the same launch twice is one cycle.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from perfcycle.core import clock
from perfcycle.core.db import insert_ignore
from perfcycle.core.errors import InvalidInput, Problem
from perfcycle.domain import audit
from perfcycle.domain.models import Cycle, Department, Employee, Participant
from perfcycle.domain.policy.loader import load_policy
from perfcycle.domain.policy.registry import policy_digest, policy_path
from perfcycle.domain.policy.schema import Policy
from perfcycle.domain.policy.snapshot import SNAPSHOT_VERSION, snapshot_of

_PERIOD = re.compile(r"^(?P<year>\d{4})(?:-(?:(?P<q>Q[1-4])|(?P<h>H[12])|(?P<m>\d{2})))?$")


def parse_period(period: str) -> tuple[date, date]:
    """'2026' | '2026-H1' | '2026-Q4' | '2026-11' -> (first day, last day), both inclusive."""
    m = _PERIOD.match(period.strip())
    if not m:
        raise InvalidInput(
            [
                Problem(
                    f"'{period}' is not a period; use YYYY, YYYY-H1, YYYY-Q4 or YYYY-MM",
                    field="period",
                )
            ]
        )
    year = int(m["year"])
    if m["q"]:
        first_month, months = (int(m["q"][1]) - 1) * 3 + 1, 3
    elif m["h"]:
        first_month, months = (int(m["h"][1]) - 1) * 6 + 1, 6
    elif m["m"]:
        first_month, months = int(m["m"]), 1
        if not 1 <= first_month <= 12:
            raise InvalidInput([Problem(f"'{period}': month must be 01..12", field="period")])
    else:
        first_month, months = 1, 12
    start = date(year, first_month, 1)
    end_month = first_month + months
    end_exclusive = date(year + (end_month - 1) // 12, (end_month - 1) % 12 + 1, 1)
    return start, date.fromordinal(end_exclusive.toordinal() - 1)


def scope_key(scope: list[str]) -> str:
    return ",".join(sorted({d.strip() for d in scope if d.strip()}))


@dataclass(frozen=True)
class LaunchRequest:
    policy: str
    period: str
    scope: list[str] = field(default_factory=list)
    start_date: date | None = None


@dataclass(frozen=True)
class ValidLaunch:
    request: LaunchRequest
    policy: Policy
    digest: str
    period_start: date
    period_end: date
    scope_key: str
    department_ids: list[str]
    employee_ids: list[str]


def validate_launch(session: Session, req: LaunchRequest) -> ValidLaunch:
    """Every check a launch must pass, all reported together; nothing is written."""
    # One spelling per period: " 2026-Q4 " must be the same cycle as "2026-Q4".
    req = replace(req, period=req.period.strip())
    problems: list[Problem] = []
    policy: Policy | None = None
    digest = ""
    try:
        path = policy_path(req.policy)
        policy = load_policy(path)
        digest = policy_digest(path)
    except InvalidInput as exc:
        problems.extend(exc.problems)
    period_start = period_end = None
    try:
        period_start, period_end = parse_period(req.period)
    except InvalidInput as exc:
        problems.extend(exc.problems)

    departments = {d.id: d for d in session.scalars(select(Department))}
    wanted = scope_key(req.scope)
    dept_ids: list[str] = []
    if wanted:
        for dept_id in wanted.split(","):
            dept = departments.get(dept_id)
            if dept is None:
                known = ", ".join(sorted(departments)) or "none - import the org chart first"
                problems.append(
                    Problem(f"unknown department '{dept_id}' (known: {known})", field="scope")
                )
            elif policy and dept.type not in policy.department_types:
                problems.append(
                    Problem(
                        f"department '{dept_id}' is {dept.type}; policy '{policy.id}' applies to "
                        f"{', '.join(policy.department_types)}",
                        field="scope",
                    )
                )
            else:
                dept_ids.append(dept_id)
    elif policy:
        dept_ids = sorted(d.id for d in departments.values() if d.type in policy.department_types)
    if policy and wanted and set(dept_ids) == {
        d.id for d in departments.values() if d.type in policy.department_types
    }:
        # Naming every department the policy applies to is the empty scope: one cycle, not two.
        wanted = ""

    employee_ids: list[str] = []
    if dept_ids:
        employee_ids = list(
            session.scalars(
                select(Employee.id)
                .where(Employee.department_id.in_(dept_ids), Employee.active)
                .order_by(Employee.id)
            )
        )
    if policy and not problems and not employee_ids:
        what = f"departments {', '.join(dept_ids)}" if dept_ids else "the organisation"
        problems.append(
            Problem(
                f"no active employees in scope ({what} for policy '{policy.id}')", field="scope"
            )
        )
    if (
        req.start_date
        and period_end
        and req.start_date > period_end.replace(year=period_end.year + 1)
    ):
        problems.append(
            Problem(
                f"start date {req.start_date} is more than a year after the period",
                field="start_date",
            )
        )
    if problems:
        raise InvalidInput(problems)
    assert policy and period_start and period_end
    return ValidLaunch(
        req, policy, digest, period_start, period_end, wanted, dept_ids, employee_ids
    )


def find_cycle(session: Session, policy: str, period: str, key: str) -> Cycle | None:
    return session.scalar(
        select(Cycle).where(Cycle.policy == policy, Cycle.period == period, Cycle.scope_key == key)
    )


def open_cycle(
    session: Session, launch: ValidLaunch, flow_run_id: str | None, actor: str = "hr"
) -> tuple[Cycle, bool]:
    """Create the cycle and its participants, or return the existing one. (cycle, created)."""
    req = launch.request
    existing = find_cycle(session, launch.policy.id, req.period, launch.scope_key)
    if existing is not None:
        return existing, False
    now = clock.now()
    cycle = Cycle(
        policy=launch.policy.id,
        policy_digest=launch.digest,
        policy_snapshot=snapshot_of(launch.policy),
        snapshot_version=SNAPSHOT_VERSION,
        period=req.period,
        period_start=launch.period_start,
        period_end=launch.period_end,
        scope_key=launch.scope_key,
        start_date=req.start_date or now.date(),
        state="running",
        flow_run_id=flow_run_id,
        created_at=now,
    )
    session.add(cycle)
    session.flush()
    employees = session.execute(
        select(Employee.id, Employee.department_id, Employee.manager_id).where(
            Employee.id.in_(launch.employee_ids)
        )
    ).all()
    insert_ignore(
        session,
        Participant.__table__,  # type: ignore[arg-type]
        [
            {
                "cycle_id": cycle.id,
                "employee_id": e.id,
                "department_id": e.department_id,
                "manager_id": e.manager_id,
            }
            for e in employees
        ],
    )
    audit.record(
        session,
        actor=actor,
        action="cycle.opened",
        subject=f"cycle:{cycle.id}",
        cycle_id=cycle.id,
        after={
            "policy": cycle.policy,
            "policy_digest": cycle.policy_digest,
            "period": cycle.period,
            "scope": launch.department_ids,
            "participants": len(employees),
            "flow_run_id": flow_run_id,
        },
    )
    return cycle, True


def stage_start(cycle: Cycle) -> datetime:
    """The first stage's deadline counts from the cycle's start date (or now, if later)."""
    start = datetime.combine(cycle.start_date, datetime.min.time(), tzinfo=UTC)
    return max(start, clock.now())


def adopt_cycle(session: Session, cycle: Cycle, flow_run_id: str, previous: str | None) -> None:
    """A new run takes over a cycle whose previous run died; it converges from the database."""
    cycle.flow_run_id = flow_run_id
    audit.record(
        session,
        actor=audit.SYSTEM,
        action="cycle.run_adopted",
        subject=f"cycle:{cycle.id}",
        cycle_id=cycle.id,
        before={"flow_run_id": previous},
        after={"flow_run_id": flow_run_id},
    )
