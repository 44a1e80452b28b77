"""The review-cycle flow's tasks.

The code lives in perfcycle.orchestration.review_cycle.tasks;
this is the top-level import path the project's layout promises.
"""

from perfcycle.orchestration.review_cycle.tasks import (
    assess_stage,
    close_stage,
    enter_stage,
    next_stage,
    record_decision,
)

__all__ = ["next_stage", "enter_stage", "assess_stage", "close_stage", "record_decision"]
