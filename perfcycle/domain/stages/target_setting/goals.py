"""One employee's goal sheet as the services that change it load it."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from perfcycle.core.errors import InvalidInput, Problem
from perfcycle.domain import access
from perfcycle.domain.access import Actor
from perfcycle.domain.deadlines import accepting_work
from perfcycle.domain.models import Goal, StageName

PERSONAL = "personal"


def sheet_goals(session: Session, cycle_id: int, employee_id: str) -> list[Goal]:
    goals = list(
        session.scalars(
            select(Goal).where(Goal.cycle_id == cycle_id, Goal.employee_id == employee_id)
        )
    )
    if not goals:
        raise InvalidInput(
            [Problem(f"{employee_id} has no goals in cycle {cycle_id}", field="employee_id")]
        )
    return goals


def own_editable_goals(
    session: Session, cycle_id: int, employee_id: str, actor: Actor
) -> list[Goal]:
    accepting_work(session, cycle_id, StageName.target_setting)
    access.require_own_goals(actor, employee_id, "change")
    goals = sheet_goals(session, cycle_id, employee_id)
    if any(g.state != "proposed" for g in goals):
        state = next(g.state for g in goals if g.state != "proposed")
        raise InvalidInput(
            [Problem(f"the goals are {state}; they can change only before signing", field="state")]
        )
    return goals
