"""The evaluation pages: a rater's assignments and their own answers (never anyone else's)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from perfcycle.domain.models import Employee, Evaluation, RaterAssignment


@dataclass(frozen=True)
class AssignmentRow:
    id: int
    cycle_id: int
    rater_id: str
    ratee_id: str
    ratee_name: str
    rater_type: str
    state: str
    submitted_at: datetime | None


def rater_assignments(session: Session, cycle_id: int, rater_id: str) -> list[AssignmentRow]:
    rows = session.execute(
        select(RaterAssignment, Employee.name)
        .join(Employee, Employee.id == RaterAssignment.ratee_id)
        .where(RaterAssignment.cycle_id == cycle_id, RaterAssignment.rater_id == rater_id)
        .order_by(Employee.name, RaterAssignment.id)
    ).tuples()
    return [_assignment_row(a, name) for a, name in rows]


def assignment(session: Session, assignment_id: int) -> AssignmentRow | None:
    row = session.execute(
        select(RaterAssignment, Employee.name)
        .join(Employee, Employee.id == RaterAssignment.ratee_id)
        .where(RaterAssignment.id == assignment_id)
    ).first()
    return _assignment_row(*row.tuple()) if row is not None else None


def _assignment_row(a: RaterAssignment, ratee_name: str) -> AssignmentRow:
    return AssignmentRow(
        a.id, a.cycle_id, a.rater_id, a.ratee_id, ratee_name, a.rater_type, a.state, a.submitted_at
    )


def own_answers(session: Session, assignment_id: int) -> dict[str, tuple[int, str]]:
    """The answers of one assignment: only ever shown to that assignment's rater."""
    rows = session.execute(
        select(Evaluation.item, Evaluation.score, Evaluation.comment).where(
            Evaluation.assignment_id == assignment_id
        )
    ).tuples()
    return {item: (score, comment) for item, score, comment in rows}
