"""The cycle-clock flow's tasks.

The code lives in perfcycle.orchestration.cycle_clock.tasks;
this is the top-level import path the project's layout promises.
"""

from perfcycle.orchestration.cycle_clock.tasks import (
    find_due_cycles,
    resume_cycles,
    send_due_notifications,
)

__all__ = ["find_due_cycles", "resume_cycles", "send_due_notifications"]
