"""A manager's team on the home page: their reports per cycle, with goals and released grades."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from perfcycle.domain.models import Cycle, Employee, Goal, Participant, Result
from perfcycle.web.queries.goals import GoalRow, GoalSheet, goal_row


@dataclass(frozen=True)
class TeamMember:
    employee_id: str
    name: str
    goals: GoalSheet
    # The released grade; None until results are released (calibration may still change them).
    grade: str | None


@dataclass(frozen=True)
class TeamCycle:
    cycle: Cycle
    members: list[TeamMember]


def team_overview(session: Session, manager_id: str, completed_since: datetime) -> list[TeamCycle]:
    """The manager's reports in running cycles and in cycles completed since `completed_since`,
    newest cycle first, reports by name.

    Reports are whom each cycle recorded (Participant.manager_id), so this lists exactly the
    people viewing_capacity lets the manager read. A constant number of queries, whatever the
    team's size: the home page runs this on every visit.
    """
    p = Participant
    rows = (
        session.execute(
            select(Cycle, p.employee_id, Employee.name)
            .join(p, p.cycle_id == Cycle.id)
            .join(Employee, Employee.id == p.employee_id)
            .where(
                p.manager_id == manager_id,
                or_(
                    Cycle.state == "running",
                    and_(Cycle.state == "completed", Cycle.completed_at >= completed_since),
                ),
            )
            .order_by(Cycle.id.desc(), Employee.name, p.employee_id)
        )
        .tuples()
        .all()
    )
    if not rows:
        return []
    cycle_ids = sorted({c.id for c, _, _ in rows})
    people = sorted({e for _, e, _ in rows})
    goals: dict[tuple[int, str], list[GoalRow]] = defaultdict(list)
    for g in session.scalars(
        select(Goal)
        .where(Goal.cycle_id.in_(cycle_ids), Goal.employee_id.in_(people))
        .order_by(Goal.id)
    ):
        goals[(g.cycle_id, g.employee_id)].append(goal_row(g))
    grades = {
        (c, e): grade
        for c, e, grade in session.execute(
            select(Result.cycle_id, Result.employee_id, Result.grade).where(
                Result.cycle_id.in_(cycle_ids),
                Result.employee_id.in_(people),
                Result.released_at.is_not(None),
            )
        ).tuples()
    }
    cycles: dict[int, Cycle] = {}
    members: dict[int, list[TeamMember]] = defaultdict(list)
    for cycle, employee_id, name in rows:
        key = (cycle.id, employee_id)
        cycles[cycle.id] = cycle
        members[cycle.id].append(
            TeamMember(employee_id, name, GoalSheet(employee_id, name, goals[key]), grades.get(key))
        )
    return [TeamCycle(cycle, members[cycle_id]) for cycle_id, cycle in cycles.items()]
