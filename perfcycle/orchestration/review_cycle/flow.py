"""review-cycle: run a cycle's stages in the order its policy lists them.

Deterministic orchestration over database state: every step is the domain's `engine.advance`
(which stage is current, enter it, close it when ready), and the flow only branches on the Step it
returns: step again, suspend until people are done or the deadline passes, suspend for the
committee's decision, or finish. A resumed run re-executes from the top and converges.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import date
from typing import Annotated, Any

from prefect import flow, get_run_logger
from prefect.flow_runs import suspend_flow_run
from prefect.input import RunInput
from pydantic import Field

from perfcycle.domain.policy.registry import list_policies
from perfcycle.domain.stages.calibration import DecisionInput
from perfcycle.orchestration.review_cycle.cycle_tasks import finish_cycle, open_cycle
from perfcycle.orchestration.review_cycle.tasks import advance_stage, record_decision

MAX_STEPS = 200  # a guard against a policy/engine bug looping forever, never reached normally


class CalibrationApproval(RunInput, DecisionInput):
    """The committee's form on the suspended run (Prefect UI → Resume)."""


PolicyName = Annotated[
    str,
    Field(description="policy file in policies/", json_schema_extra={"enum": list_policies()}),
]
Period = Annotated[str, Field(description="2026 | 2026-H1 | 2026-Q4 | 2026-11")]
Scope = Annotated[
    list[str], Field(description="department ids; leave empty for the whole organisation")
]


@flow(name="review-cycle", log_prints=True, persist_result=False)
def review_cycle(
    policy: PolicyName,
    period: Period,
    scope: Scope = [],  # noqa: B006 - Prefect validates a fresh copy for every run
    start_date: date | None = None,
) -> dict[str, Any]:
    """Launch (or continue) a review cycle.

    Args:
        policy: the policy file in policies/ that defines stages, indicators and deadlines
        period: the period under review: 2026, 2026-H1, 2026-Q4 or 2026-11
        scope: department ids; leave empty for every department the policy applies to
        start_date: when the first stage's deadline starts counting (default: today)
    """
    logger = get_run_logger()
    opened = open_cycle(policy, period, list(scope), start_date)
    cycle_id = opened.cycle_id
    if opened.mode in ("driven_elsewhere", "completed"):
        logger.info("Cycle %s: %s (flow run %s); nothing to do here.", cycle_id,
                    opened.mode.replace("_", " "), opened.other_run)
        return asdict(opened)

    for _ in range(MAX_STEPS):
        step = advance_stage(cycle_id)
        if step.next == "finished":
            break
        if step.next == "people":
            suspend_flow_run(timeout=step.timeout_s, key=step.key)
        elif step.next == "approval":
            decision = suspend_flow_run(
                wait_for_input=CalibrationApproval, timeout=step.timeout_s, key=step.key
            )
            record_decision(cycle_id, decision.model_dump(exclude={"metadata"}))
    else:
        raise RuntimeError(f"cycle {cycle_id} did not converge in {MAX_STEPS} steps")
    finish_cycle(cycle_id)
    return {"cycle_id": cycle_id, "mode": "completed"}
