"""The review-cycle flow's tasks.

The code lives in perfcycle.orchestration.review_cycle.tasks;
this is the top-level import path the project's layout promises.
"""

from perfcycle.orchestration.review_cycle.tasks import advance_stage, record_decision

__all__ = ["advance_stage", "record_decision"]
