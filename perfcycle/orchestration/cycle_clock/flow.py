"""cycle-clock: every 15 minutes, resume cycles whose stage is complete or past its deadline, and
enqueue the reminders, escalations and check-in mails that are due.

Our deadlines are enforced here, not by Prefect's pause expiry (which scans few runs at a time).
"""

from __future__ import annotations

from prefect import flow

from perfcycle.orchestration.cycle_clock.tasks import (
    find_due_cycles,
    resume_cycles,
    send_due_notifications,
)


@flow(name="cycle-clock", persist_result=False)
def cycle_clock() -> int:
    """Returns how many cycles were resumed."""
    due = find_due_cycles()
    resumed = resume_cycles(due) if due else 0
    # After resuming: a failure here fails the clock run visibly, but never holds up a cycle.
    send_due_notifications()
    return resumed
