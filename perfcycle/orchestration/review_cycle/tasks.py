"""One task per stage step (engine.advance: open, enter, assess, close) and one to record the
committee's decision.

Task runs are per stage (never per employee): a cycle of any size costs a few dozen task runs.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.deployments import run_deployment

from perfcycle.core.db import session_scope
from perfcycle.domain import engine
from perfcycle.domain.policy.snapshot import cycle_policy
from perfcycle.domain.reports import stage_markdown
from perfcycle.domain.stages.calibration import DecisionInput, apply_decision
from perfcycle.notifications import relay


def _artifact(cycle_id: int, stage: str, phase: str, done: int | None = None,
              total: int | None = None) -> None:
    with session_scope() as session:
        cycle = engine.get_cycle(session, cycle_id)
        inst = engine.stage_instances(session, cycle_id)[stage]
        markdown = stage_markdown(cycle, inst, phase, done, total)
    create_markdown_artifact(
        key=f"cycle-{cycle_id}-{stage.replace('_', '-')}-{phase}",
        markdown=markdown,
        description=f"Cycle {cycle_id}: {stage} {phase}",
    )


MAIL_RELAY_DEPLOYMENT = "mail-relay/every-minute"


def _start_mail_relay(cycle_id: int) -> None:
    """Send the step's mail now rather than at the relay's next minute. Best effort: the
    schedule delivers it anyway, so an unreachable Prefect never fails the stage."""
    try:
        with session_scope() as session:
            newest = relay.newest_pending_id(session, cycle_id)
        if newest is None:
            return
        # Keyed by the newest row: a re-run step that wrote nothing new starts no second run.
        run_deployment(MAIL_RELAY_DEPLOYMENT, timeout=0, as_subflow=False,
                       idempotency_key=f"mail-relay:outbox-{newest}")
    except Exception as exc:
        get_run_logger().warning("Could not start %s now (%s: %s); it sends within a minute.",
                                 MAIL_RELAY_DEPLOYMENT, type(exc).__name__, exc)


@task(name="advance-stage")
def advance_stage(cycle_id: int) -> engine.Step:
    """One step of the stage loop; publishes what it entered and closed for the auditor."""
    step = engine.advance(cycle_id)
    if step.stage is None:
        return step
    logger = get_run_logger()
    logger.info("Entered %s: %s", step.stage, step.entered)
    _artifact(cycle_id, step.stage, "entered")
    if step.closed is not None:
        logger.info("Closed %s: %s", step.stage, step.closed)
        _artifact(cycle_id, step.stage, "closed")
    else:
        logger.info("%s: %s of %s done, next: %s (due %s)", step.stage, step.done, step.total,
                    step.next, step.due_at)
    _start_mail_relay(cycle_id)
    return step


@task(name="record-calibration-decision")
def record_decision(cycle_id: int, decision: dict[str, Any]) -> bool:
    parsed = DecisionInput.model_validate(decision)
    with session_scope() as session:
        cycle = engine.get_cycle(session, cycle_id)
        inst = engine.stage_instances(session, cycle_id)["calibration"]
        recorded = apply_decision(session, cycle, cycle_policy(cycle), inst, parsed)
    get_run_logger().info("Calibration decision by %s: %s (%s)", parsed.approver,
                          parsed.decision, "recorded" if recorded else "already recorded")
    _start_mail_relay(cycle_id)
    return recorded
