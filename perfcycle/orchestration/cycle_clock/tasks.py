"""The cycle clock's work: resume waiting cycles that should move; send what is due by date."""

from __future__ import annotations

from prefect import get_run_logger, task
from sqlalchemy import select

from perfcycle.core import clock
from perfcycle.core.db import session_scope
from perfcycle.domain import engine
from perfcycle.domain.models import Cycle
from perfcycle.notifications import reminders
from perfcycle.orchestration.client import resume


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


@task(name="send-due-notifications")
def send_due_notifications() -> dict[str, int]:
    """Reminder digests, escalations and check-ins due now: one task run, whatever the headcount.

    Each kind commits on its own, so a failing one does not hold back the others' mail.
    """
    logger = get_run_logger()
    kinds = {
        "reminders": reminders.due_reminders,
        "escalations": reminders.due_escalations,
        "checkins": reminders.due_checkins,
    }
    counts: dict[str, int] = {}
    failed: list[str] = []
    for kind, send in kinds.items():
        try:
            with session_scope() as session:
                counts[kind] = send(session, clock.now())
        except Exception:
            logger.exception("Sending %s failed", kind)
            failed.append(kind)
    logger.info("Enqueued: %s", counts)
    if failed:
        raise RuntimeError(f"sending {', '.join(failed)} failed (see the log above)")
    return counts
