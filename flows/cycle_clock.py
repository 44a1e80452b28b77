"""cycle-clock: every 15 minutes, resume cycles whose stage is complete or past its deadline.

Our deadlines are enforced here, not by Prefect's pause expiry (which scans few runs at a time).
"""

from __future__ import annotations

from prefect import flow

from tasks.clock import find_due_cycles, resume_cycles


@flow(name="cycle-clock", persist_result=False)
def cycle_clock() -> int:
    due = find_due_cycles()
    return resume_cycles(due) if due else 0
