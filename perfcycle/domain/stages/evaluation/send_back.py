"""Calibration sends ratees back to their raters: their assignments open in a new round."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from perfcycle.core.errors import InvalidInput, Problem
from perfcycle.domain import audit
from perfcycle.domain.models import RaterAssignment
from perfcycle.domain.stages.evaluation.states import EXPIRED, PENDING, SUBMITTED


def reopen_evaluations(
    session: Session, cycle_id: int, ratee_ids: Sequence[str], actor: str
) -> int:
    """Send ratees back to their raters: closed assignments become pending in the next round."""
    wanted = sorted(set(ratee_ids))
    if not wanted:
        return 0
    known = set(
        session.scalars(
            select(RaterAssignment.ratee_id)
            .where(RaterAssignment.cycle_id == cycle_id, RaterAssignment.ratee_id.in_(wanted))
            .distinct()
        )
    )
    unknown = [r for r in wanted if r not in known]
    if unknown:
        raise InvalidInput(
            [
                Problem(f"{r} has no evaluations in cycle {cycle_id}", field="ratee_ids")
                for r in unknown
            ]
        )
    result = session.execute(
        update(RaterAssignment)
        .where(
            RaterAssignment.cycle_id == cycle_id,
            RaterAssignment.ratee_id.in_(wanted),
            RaterAssignment.state.in_([SUBMITTED, EXPIRED]),
        )
        .values(state=PENDING, round=RaterAssignment.round + 1, submitted_at=None)
        .execution_options(synchronize_session=False)
    )
    reopened = max(getattr(result, "rowcount", 0) or 0, 0)
    audit.record(
        session,
        actor=actor,
        action="evaluation.reopened",
        subject=f"cycle:{cycle_id}",
        cycle_id=cycle_id,
        after={"ratees": wanted, "assignments": reopened},
    )
    return reopened
