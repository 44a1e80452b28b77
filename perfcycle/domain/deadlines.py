"""Does a stage accept people's work now: the one rule, for the portal, the CLI and the demo.

Every service function that takes someone's work (goals, evaluations, paper forms, interviews,
appeals, HR's metric values) asks here before it changes anything, so a late submission is
refused the same way whichever door it comes through.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from perfcycle.core import clock
from perfcycle.core.errors import InvalidInput, Problem
from perfcycle.domain.models import Cycle, StageInstance, StageName


class StageClosed(InvalidInput):
    """The stage takes no more work: not open (yet or any more), or past its deadline.

    `stage` and `closed_at` (None when it never opened) let a page word it in its language.
    """

    def __init__(self, stage: str, closed_at: datetime | None, message: str) -> None:
        when = _when(closed_at) if closed_at else ""
        super().__init__(
            [
                Problem(
                    message,
                    field="stage",
                    code="stage_closed",
                    values=(("stage", stage), ("when", when)),
                )
            ]
        )
        self.stage = stage
        self.closed_at = closed_at


def accepting_work(session: Session, cycle_id: int, stage: str) -> StageInstance:
    """The cycle's `stage`, if it accepts work now; raises StageClosed otherwise.

    One boundary: work is accepted while the stage is open and strictly before its due_at. At
    due_at exactly it is late, the moment the clock may close the stage (engine: `now >=
    due_at`). A stage the committee extended accepts work until its new due_at.
    """
    inst = session.scalar(
        select(StageInstance).where(
            StageInstance.cycle_id == cycle_id, StageInstance.name == stage
        )
    )
    if inst is None or inst.state == "pending":
        raise StageClosed(stage, None, f"the {stage} stage of cycle {cycle_id} is not open")
    if not accepts_work(inst, clock.now()):
        # Closed early (every answer in) or at the deadline: say the earlier.
        closed = inst.closed_at if inst.closed_at and inst.closed_at < inst.due_at else None
        when = closed or inst.due_at
        raise StageClosed(stage, when, f"the {stage} stage closed on {_when(when)}")
    return inst


def accepts_work(inst: StageInstance | None, now: datetime) -> bool:
    """The boundary itself, for pages that show or hide a form: open and strictly before due_at."""
    return inst is not None and inst.state == "open" and now < inst.due_at


def accepting_metrics(session: Session, cycle: Cycle, file: str) -> None:
    """HR's metric values are taken while the cycle runs, until data collection completes.

    Unlike people's work they are also taken before the stage opens (HR loads them ahead) and
    past its deadline: a data collection stage still open waits for exactly these values.
    """
    if cycle.state != "running":
        raise InvalidInput(
            [Problem(f"cycle {cycle.id} is {cycle.state}; metrics can no longer be supplied", file)]
        )
    inst = session.scalar(
        select(StageInstance).where(
            StageInstance.cycle_id == cycle.id,
            StageInstance.name == StageName.data_collection,
        )
    )
    if inst is not None and inst.state == "completed":
        when = f" at {_when(inst.closed_at)}" if inst.closed_at else ""
        raise StageClosed(
            StageName.data_collection,
            inst.closed_at,
            f"data collection of cycle {cycle.id} closed{when}; metrics can no longer be supplied",
        )


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")
