"""review-cycle: a cycle's stages in policy order (deployment entrypoint).

The code lives in perfcycle.orchestration.review_cycle.flow;
this file is the stable path that deploy/prefect.yaml and `prefect deploy` name.
"""

from perfcycle.orchestration.review_cycle.flow import CalibrationApproval, review_cycle

__all__ = ["CalibrationApproval", "review_cycle"]
