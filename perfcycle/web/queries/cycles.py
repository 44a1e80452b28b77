"""Cycles and people as several pages read them: which cycle, who takes part, their names."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from perfcycle.domain.models import Cycle, Employee, Participant, StageInstance


def cycle_or_none(session: Session, cycle_id: int) -> Cycle | None:
    return session.get(Cycle, cycle_id)


def is_participant(session: Session, cycle_id: int, employee_id: str) -> bool:
    found = session.scalar(
        select(Participant.id).where(
            Participant.cycle_id == cycle_id, Participant.employee_id == employee_id
        )
    )
    return found is not None


def stage_instance(session: Session, cycle_id: int, name: str) -> StageInstance | None:
    return session.scalar(
        select(StageInstance).where(StageInstance.cycle_id == cycle_id, StageInstance.name == name)
    )


def names_of(session: Session, ids: set[str]) -> dict[str, str]:
    if not ids:
        return {}
    rows = session.execute(select(Employee.id, Employee.name).where(Employee.id.in_(sorted(ids))))
    return {i: n for i, n in rows.tuples()}


def cycles_of(session: Session, employee_id: str) -> list[Cycle]:
    """The cycles the person takes part in, newest first."""
    return list(
        session.scalars(
            select(Cycle)
            .join(Participant, Participant.cycle_id == Cycle.id)
            .where(Participant.employee_id == employee_id)
            .order_by(Cycle.id.desc())
        )
    )
