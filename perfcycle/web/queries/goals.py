"""The goals page: goal sheets, one per employee and cycle, as both sides sign them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from perfcycle.domain import access
from perfcycle.domain.models import Goal
from perfcycle.web.queries.cycles import names_of


@dataclass(frozen=True)
class GoalRow:
    id: int
    indicator_id: str
    kind: str
    category: str
    title: str
    measure: str | None
    deadline: date | None
    target: float | None
    weight: float
    locked: bool
    state: str
    employee_signed_at: datetime | None
    manager_signed_at: datetime | None

    @property
    def personal(self) -> bool:
        return self.kind == "personal"


@dataclass(frozen=True)
class GoalSheet:
    """One employee's goals in one cycle: what both sides sign."""

    employee_id: str
    name: str
    goals: list[GoalRow]

    @property
    def state(self) -> str:
        """The sheet's state: the least advanced of its goals."""
        states = {g.state for g in self.goals}
        for state in ("proposed", "submitted", "agreed"):
            if state in states:
                return state
        return "none"

    @property
    def total_weight(self) -> float:
        return sum(g.weight for g in self.goals)

    @property
    def personal(self) -> list[GoalRow]:
        return [g for g in self.goals if g.personal]

    @property
    def employee_signed_at(self) -> datetime | None:
        return _latest(g.employee_signed_at for g in self.goals)

    @property
    def manager_signed_at(self) -> datetime | None:
        return _latest(g.manager_signed_at for g in self.goals)


def _latest(moments: Any) -> datetime | None:
    present = [m for m in moments if m is not None]
    return max(present) if present else None


def goal_row(g: Goal) -> GoalRow:
    return GoalRow(
        g.id,
        g.indicator_id,
        g.kind,
        g.category,
        g.title,
        g.measure,
        g.deadline,
        g.target,
        g.weight,
        g.locked,
        g.state,
        g.employee_signed_at,
        g.manager_signed_at,
    )


def goal_sheet(session: Session, cycle_id: int, employee_id: str) -> GoalSheet:
    goals = session.scalars(
        select(Goal)
        .where(Goal.cycle_id == cycle_id, Goal.employee_id == employee_id)
        .order_by(Goal.id)
    )
    name = names_of(session, {employee_id}).get(employee_id, employee_id)
    return GoalSheet(employee_id, name, [goal_row(g) for g in goals])


def sheets_to_review(
    session: Session, cycle_id: int, actor: access.Actor
) -> list[tuple[GoalSheet, bool]]:
    """The goal sheets the actor approves or returns in the cycle, each with True where they
    review it as HR standing in for a missing manager (access.goal_reviewees says whose)."""
    return [
        (goal_sheet(session, cycle_id, r.employee_id), r.as_hr)
        for r in access.goal_reviewees(session, actor, cycle_id)
    ]
