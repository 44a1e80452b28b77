"""The cycle clock's work: find waiting cycles that should move, and resume their runs."""

from __future__ import annotations

from prefect import get_run_logger, task
from sqlalchemy import select

from perfcycle import engine
from perfcycle.db import session_scope
from perfcycle.models import Cycle
from perfcycle.orchestrator import resume


@task(name="find-due-cycles")
def find_due_cycles() -> list[dict[str, str | int]]:
    due: list[dict[str, str | int]] = []
    with session_scope() as session:
        for cycle in session.scalars(select(Cycle).where(Cycle.state == "running")):
            reason = engine.resume_reason(session, cycle)
            if reason and cycle.flow_run_id:
                due.append({"cycle_id": cycle.id, "flow_run_id": cycle.flow_run_id,
                            "reason": reason})
    return due


@task(name="resume-cycles")
def resume_cycles(due: list[dict[str, str | int]]) -> int:
    logger = get_run_logger()
    resumed = 0
    for item in due:
        if resume(str(item["flow_run_id"])):
            resumed += 1
            logger.info("Resumed cycle %s (%s)", item["cycle_id"], item["reason"])
    return resumed
