"""HR's progress page: per stage and department, how much is done, and who is overdue."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from perfcycle.domain import engine
from perfcycle.domain.models import (
    Appeal,
    Cycle,
    Department,
    Employee,
    Goal,
    ImprovementPlan,
    Interview,
    Participant,
    RaterAssignment,
    StageInstance,
    StageName,
)
from perfcycle.domain.policy.snapshot import cycle_policy
from perfcycle.notifications.reminders import describe, open_people_stages


@dataclass(frozen=True)
class DepartmentProgress:
    department_id: str
    name: str
    done: int
    total: int


@dataclass(frozen=True)
class StageProgress:
    name: str
    state: str
    due_at: datetime | None
    done: int
    total: int
    attempt: int
    departments: list[DepartmentProgress]


@dataclass(frozen=True)
class OverdueTask:
    person_id: str
    name: str
    department: str
    stage: str
    what: str
    due_at: datetime


@dataclass(frozen=True)
class HrProgress:
    cycle: Cycle
    stages: list[StageProgress]
    overdue: list[OverdueTask]


# stage -> (model, its employee column, states that count as done); must agree with the handlers'
# progress() so the department rows add up to the stage's total.
_UNITS: dict[str, tuple[Any, Any, tuple[str, ...]]] = {
    StageName.interview: (Interview, Interview.employee_id, ("acknowledged",)),
    StageName.improvement: (ImprovementPlan, ImprovementPlan.employee_id, ("closed",)),
    StageName.appeal: (Appeal, Appeal.employee_id, ("accepted", "decided")),
}


def _department_counts(session: Session, cycle_id: int, stage: str) -> dict[str, tuple[int, int]]:
    """department id -> (done, total) of the stage's units of work, by the ratee's department."""
    p = Participant
    if stage == StageName.target_setting:
        open_people = (
            select(Goal.employee_id)
            .where(Goal.cycle_id == cycle_id, Goal.state != "agreed")
            .distinct()
            .scalar_subquery()
        )
        rows = session.execute(
            select(
                p.department_id,
                func.count(p.id),
                func.count(p.id).filter(p.employee_id.not_in(open_people)),
            )
            .where(p.cycle_id == cycle_id)
            .group_by(p.department_id)
        ).tuples()
        return {d: (done, total) for d, total, done in rows}
    if stage == StageName.evaluation:
        ra = RaterAssignment
        rows = session.execute(
            select(
                p.department_id,
                func.count(ra.id).filter(ra.state.in_(["pending", "submitted"])),
                func.count(ra.id).filter(ra.state == "submitted"),
            )
            .join(p, (p.cycle_id == ra.cycle_id) & (p.employee_id == ra.ratee_id))
            .where(ra.cycle_id == cycle_id)
            .group_by(p.department_id)
        ).tuples()
        return {d: (done, total) for d, total, done in rows}
    unit = _UNITS.get(stage)
    if unit is None:
        return {}
    model, employee_column, done_states = unit
    rows = session.execute(
        select(
            p.department_id,
            func.count(model.id),
            func.count(model.id).filter(model.state.in_(done_states)),
        )
        .join(p, (p.cycle_id == model.cycle_id) & (p.employee_id == employee_column))
        .where(model.cycle_id == cycle_id)
        .group_by(p.department_id)
    ).tuples()
    return {d: (done, total) for d, total, done in rows}


def hr_progress(session: Session, cycle: Cycle, now: datetime, locale: str) -> HrProgress:
    policy = cycle_policy(cycle)
    instances = engine.stage_instances(session, cycle.id)
    departments = dict(session.execute(select(Department.id, Department.name)).tuples().all())
    stages: list[StageProgress] = []
    for stage in policy.stages:
        inst = instances.get(stage.name)
        if inst is None:
            stages.append(StageProgress(stage.name, "pending", None, 0, 0, 1, []))
            continue
        progress = engine.stage_progress(session, cycle, policy, inst)
        by_department = [
            DepartmentProgress(d, departments.get(d, d), done, total)
            for d, (done, total) in sorted(
                _department_counts(session, cycle.id, stage.name).items()
            )
        ]
        stages.append(
            StageProgress(
                stage.name,
                inst.state,
                inst.due_at,
                progress.done,
                progress.total,
                inst.attempt,
                by_department,
            )
        )
    return HrProgress(cycle, stages, overdue_tasks(session, cycle, now, locale))


def overdue_tasks(
    session: Session, cycle: Cycle, now: datetime, locale: str
) -> list[OverdueTask]:
    """Unfinished personal tasks of open stages whose deadline has passed."""
    if cycle.state != "running":
        return []
    found: list[tuple[str, str, StageInstance, Any]] = []
    for open_stage in open_people_stages(session, cycle.id):
        inst = open_stage.inst
        if now < inst.due_at:
            continue
        for person_id, tasks in open_stage.pending(session).items():
            found += [(person_id, inst.name, inst, t) for t in tasks]
    people = {
        e.id: e
        for e in session.scalars(
            select(Employee).where(Employee.id.in_(sorted({f[0] for f in found})))
        )
    }
    departments = dict(session.execute(select(Department.id, Department.name)).tuples().all())
    rows = []
    for person_id, stage, inst, task in found:
        person = people.get(person_id)
        rows.append(
            OverdueTask(
                person_id,
                person.name if person else person_id,
                departments.get(person.department_id, "") if person else "",
                stage,
                describe(task, locale),
                inst.due_at,
            )
        )
    return sorted(rows, key=lambda r: (r.due_at, r.department, r.name))
