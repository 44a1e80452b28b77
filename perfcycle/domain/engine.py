"""The stage engine: open, enter, assess, apply deadlines, close — one step at a time.

`advance` is the one stage loop's step: the review-cycle flow calls it through a thin task, and
tests drive it directly. The cycle clock and the portal call `resume_reason` to decide whether a
suspended run should be resumed. Every function here is idempotent and reads the truth from the
database, so a re-run from the top converges.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from perfcycle.core import clock
from perfcycle.core.db import session_scope
from perfcycle.core.errors import InvalidInput
from perfcycle.domain import audit
from perfcycle.domain.cycles import stage_start
from perfcycle.domain.models import Cycle, StageInstance, StageName
from perfcycle.domain.policy.schema import Extend, Policy, Stage
from perfcycle.domain.policy.snapshot import cycle_policy, cycle_policy_or_none
from perfcycle.domain.stages.base import Progress, StageContext, StageHandler
from perfcycle.domain.stages.registry import HANDLERS
from perfcycle.notifications.notify import notify

# Margin between our deadline and Prefect's own pause timeout: the cycle clock acts first.
PREFECT_TIMEOUT_MARGIN = timedelta(days=1)
APPROVAL_TIMEOUT_MARGIN = timedelta(days=30)

Wait = Literal["people", "approval", "ready"]
# What the loop does after a step: step again, suspend until people are done (or the deadline),
# suspend for the committee's decision (run input), or finish.
Next = Literal["continue", "people", "approval", "finished"]


@dataclass(frozen=True)
class StageStatus:
    """`assess`'s verdict on an open stage: ready to close, or waiting (for people or approval)."""

    cycle_id: int
    stage: str
    wait: Wait
    key: str = ""
    timeout_s: int = 0
    attempt: int = 1
    done: int = 0
    total: int = 0
    due_at: datetime | None = None


@dataclass(frozen=True)
class Step:
    """What one `advance` did, and what the loop must do next."""

    cycle_id: int
    # The stage this step worked on; None when the cycle had no stage left.
    stage: str | None
    next: Next
    # The handler's summaries: `entered` on every step that worked on a stage (entering is
    # idempotent, so a re-run reports what was created now), `closed` when this step closed it.
    entered: dict[str, Any] | None = None
    closed: dict[str, Any] | None = None
    # For a wait: the suspend key and timeout, and the stage's progress and deadline.
    key: str = ""
    timeout_s: int = 0
    attempt: int = 1
    done: int = 0
    total: int = 0
    due_at: datetime | None = None


def advance(cycle_id: int, url: str | None = None) -> Step:
    """One step of the stage loop: finish the cycle if no stage is left, else open the current
    stage, enter it, assess it and close it when it is ready.

    Each phase commits on its own, as a flow run that dies between them leaves it: a re-run
    finds what was committed and does only the rest.
    """
    with session_scope(url) as session:
        cycle = get_cycle(session, cycle_id)
        policy = cycle_policy(cycle)
        stage = current_stage(session, cycle, policy)
        if stage is None:
            finish_cycle(session, cycle)
            return Step(cycle_id, None, "finished")
        open_stage(session, cycle, policy, stage)
    with session_scope(url) as session:
        cycle, inst = _cycle_and_stage(session, cycle_id, stage.name)
        entered = enter_stage(session, cycle, policy, inst)
    with session_scope(url) as session:
        cycle, inst = _cycle_and_stage(session, cycle_id, stage.name)
        status = assess(session, cycle, policy, inst)
    if status.wait == "ready":
        with session_scope(url) as session:
            cycle, inst = _cycle_and_stage(session, cycle_id, stage.name)
            closed = close_stage(session, cycle, policy, inst)
        return _step(status, "continue", entered, closed)
    return _step(status, status.wait, entered)


def _cycle_and_stage(session: Session, cycle_id: int, stage: str) -> tuple[Cycle, StageInstance]:
    return get_cycle(session, cycle_id), stage_instances(session, cycle_id)[stage]


def _step(
    status: StageStatus,
    next_: Next,
    entered: dict[str, Any],
    closed: dict[str, Any] | None = None,
) -> Step:
    return Step(
        cycle_id=status.cycle_id,
        stage=status.stage,
        next=next_,
        entered=entered,
        closed=closed,
        key=status.key,
        timeout_s=status.timeout_s,
        attempt=status.attempt,
        done=status.done,
        total=status.total,
        due_at=status.due_at,
    )


def suspend_key(stage: str, attempt: int, wait: int | None = None) -> str:
    """Prefect pause keys allow only lowercase letters, digits and dashes."""
    parts = [stage.replace("_", "-"), f"a{attempt}"] + ([f"w{wait}"] if wait is not None else [])
    return "-".join(parts)


def handler_for(stage: str) -> StageHandler:
    return HANDLERS[StageName(stage)]


def stage_progress(
    session: Session, cycle: Cycle, policy: Policy, inst: StageInstance
) -> Progress:
    return handler_for(inst.name).progress(StageContext(session, cycle, policy, inst))


def needs_approval(stage: str) -> bool:
    return bool(getattr(handler_for(stage), "needs_approval", False))


def get_cycle(session: Session, cycle_id: int) -> Cycle:
    cycle = session.get(Cycle, cycle_id)
    if cycle is None:
        raise InvalidInput(f"no cycle with id {cycle_id}")
    return cycle


def stage_instances(session: Session, cycle_id: int) -> dict[str, StageInstance]:
    rows = session.scalars(select(StageInstance).where(StageInstance.cycle_id == cycle_id))
    return {s.name: s for s in rows}


def current_stage(session: Session, cycle: Cycle, policy: Policy) -> Stage | None:
    """The first stage in policy order that is not completed (a send-back re-opens one)."""
    return _first_not_completed(policy, stage_instances(session, cycle.id))


def _first_not_completed(policy: Policy, instances: dict[str, StageInstance]) -> Stage | None:
    for stage in policy.stages:
        inst = instances.get(stage.name)
        if inst is None or inst.state != "completed":
            return stage
    return None


def open_stage(session: Session, cycle: Cycle, policy: Policy, stage: Stage) -> StageInstance:
    returning = cycle.current_stage != stage.name
    cycle.current_stage = stage.name
    existing = stage_instances(session, cycle.id).get(stage.name)
    if existing is not None:
        if returning and existing.state == "open":
            _full_time_on_return(session, cycle, stage, existing)
        return existing
    first = stage.name == policy.stages[0].name
    opened = clock.now()
    base = stage_start(cycle) if first else opened
    inst = StageInstance(
        cycle_id=cycle.id,
        name=stage.name,
        position=[s.name for s in policy.stages].index(stage.name),
        state="open",
        opened_at=opened,
        due_at=base + timedelta(days=stage.days),
        summary={},
    )
    session.add(inst)
    session.flush()
    cycle.current_stage = stage.name
    audit.record(
        session,
        actor=audit.SYSTEM,
        action="stage.opened",
        subject=f"cycle:{cycle.id}/stage:{stage.name}",
        cycle_id=cycle.id,
        after={"due_at": inst.due_at.isoformat()},
    )
    _mail_hr(session, cycle, inst, "stage_opened")
    return inst


def _full_time_on_return(
    session: Session, cycle: Cycle, stage: Stage, inst: StageInstance
) -> None:
    """A stage the cycle comes back to (calibration after a send-back's re-evaluation) keeps
    its whole period from now: the earlier stage may have run late or been extended."""
    due = clock.now() + timedelta(days=stage.days)
    if due <= inst.due_at:
        return
    before = inst.due_at
    inst.due_at = due
    audit.record(
        session,
        actor=audit.SYSTEM,
        action="stage.deadline_reset",
        subject=f"cycle:{cycle.id}/stage:{stage.name}",
        cycle_id=cycle.id,
        before={"due_at": before.isoformat()},
        after={"due_at": due.isoformat()},
    )


def enter_stage(
    session: Session, cycle: Cycle, policy: Policy, inst: StageInstance
) -> dict[str, Any]:
    summary = handler_for(inst.name).enter(StageContext(session, cycle, policy, inst))
    inst.summary = {**(inst.summary or {}), "entered": summary}
    return summary


def assess(session: Session, cycle: Cycle, policy: Policy, inst: StageInstance) -> StageStatus:
    """Decide the stage's next move: ready to close, or wait (applying the deadline rule)."""
    stage = policy.stage(inst.name)
    progress = stage_progress(session, cycle, policy, inst)
    if progress.complete:
        return _status(inst, "ready", progress)
    now = clock.now()
    if needs_approval(inst.name):
        if now >= inst.due_at:
            _escalate_once(session, cycle, inst, progress)
        timeout = inst.due_at - now + APPROVAL_TIMEOUT_MARGIN
        return _status(
            inst, "approval", progress, key=suspend_key(inst.name, inst.attempt), timeout=timeout
        )
    if now >= inst.due_at and not _apply_deadline(session, cycle, stage, inst, progress):
        return _status(inst, "ready", progress)
    inst.waits += 1
    timeout = inst.due_at - clock.now() + PREFECT_TIMEOUT_MARGIN
    return _status(
        inst, "people", progress, key=suspend_key(inst.name, inst.attempt, inst.waits),
        timeout=timeout
    )


def _apply_deadline(
    session: Session, cycle: Cycle, stage: Stage, inst: StageInstance, progress: Progress
) -> bool:
    """Apply the policy's deadline rule; True if the stage keeps waiting."""
    action = stage.on_deadline
    if isinstance(action, Extend) and inst.extensions == 0:
        before = inst.due_at
        inst.due_at = inst.due_at + timedelta(days=action.extend)
        inst.extensions += 1
        audit.record(
            session,
            actor=audit.SYSTEM,
            action="stage.extended",
            subject=f"cycle:{cycle.id}/stage:{inst.name}",
            cycle_id=cycle.id,
            before={"due_at": before.isoformat()},
            after={
                "due_at": inst.due_at.isoformat(),
                "done": progress.done,
                "total": progress.total,
            },
        )
        return True
    if action == "escalate" and not inst.escalated:
        _escalate_once(session, cycle, inst, progress)
        inst.due_at = inst.due_at + timedelta(days=stage.escalation_grace_days)
        return True
    inst.close_reason = "deadline"
    return False


def _escalate_once(session: Session, cycle: Cycle, inst: StageInstance, progress: Progress) -> None:
    if inst.escalated:
        return
    inst.escalated = True
    audit.record(
        session,
        actor=audit.SYSTEM,
        action="stage.escalated",
        subject=f"cycle:{cycle.id}/stage:{inst.name}",
        cycle_id=cycle.id,
        after={"done": progress.done, "total": progress.total, "due_at": inst.due_at.isoformat()},
    )
    _mail_hr(
        session,
        cycle,
        inst,
        "stage_escalated",
        extra={"done": progress.done, "total": progress.total},
    )


def close_stage(
    session: Session, cycle: Cycle, policy: Policy, inst: StageInstance
) -> dict[str, Any]:
    if inst.state == "completed":
        return dict(inst.summary.get("closed", {}))
    summary = handler_for(inst.name).close(StageContext(session, cycle, policy, inst))
    inst.state = "completed"
    inst.closed_at = clock.now()
    inst.close_reason = inst.close_reason or "complete"
    inst.summary = {**(inst.summary or {}), "closed": summary}
    audit.record(
        session,
        actor=audit.SYSTEM,
        action="stage.closed",
        subject=f"cycle:{cycle.id}/stage:{inst.name}",
        cycle_id=cycle.id,
        after={"reason": inst.close_reason, **summary},
    )
    _mail_hr(session, cycle, inst, "stage_closed", extra={"reason": inst.close_reason})
    return summary


def reopen_stage(
    session: Session, cycle: Cycle, policy: Policy, name: str, actor: str
) -> StageInstance:
    """Send a stage back (calibration's send_back): new attempt, fresh deadline."""
    inst = stage_instances(session, cycle.id)[name]
    before = {"state": inst.state, "attempt": inst.attempt}
    inst.state = "open"
    inst.attempt += 1
    inst.waits = 0
    inst.extensions = 0
    inst.escalated = False
    inst.closed_at = None
    inst.close_reason = None
    inst.opened_at = clock.now()
    inst.due_at = inst.opened_at + timedelta(days=policy.stage(name).days)
    cycle.current_stage = name
    audit.record(
        session,
        actor=actor,
        action="stage.reopened",
        subject=f"cycle:{cycle.id}/stage:{name}",
        cycle_id=cycle.id,
        before=before,
        after={"state": "open", "attempt": inst.attempt, "due_at": inst.due_at.isoformat()},
    )
    _mail_hr(session, cycle, inst, "stage_opened")  # keyed by the new attempt: a mail of its own
    return inst


def finish_cycle(session: Session, cycle: Cycle) -> None:
    if cycle.state == "completed":
        return
    cycle.state = "completed"
    cycle.current_stage = None
    cycle.completed_at = clock.now()
    audit.record(
        session,
        actor=audit.SYSTEM,
        action="cycle.completed",
        subject=f"cycle:{cycle.id}",
        cycle_id=cycle.id,
        before={"state": "running"},
        after={"state": "completed"},
    )


def resume_reason(session: Session, cycle: Cycle) -> str | None:
    """Why a waiting cycle's run should be resumed now, or None. Used by the clock and portal."""
    if cycle.state != "running":
        return None
    policy = cycle_policy(cycle)
    instances = stage_instances(session, cycle.id)
    stage = _first_not_completed(policy, instances)
    if stage is None:
        return "finished"
    inst = instances.get(stage.name)
    if inst is None or inst.state == "completed":
        return "next stage"
    progress = stage_progress(session, cycle, policy, inst)
    if needs_approval(inst.name):
        # Only the committee's decision (run input) resumes an approval; the clock escalates.
        if clock.now() >= inst.due_at:
            _escalate_once(session, cycle, inst, progress)
        return None
    if progress.complete:
        return "complete"
    if clock.now() >= inst.due_at:
        return "deadline"
    return None


def _status(
    inst: StageInstance,
    wait: Wait,
    progress: Progress,
    key: str = "",
    timeout: timedelta | None = None,
) -> StageStatus:
    return StageStatus(
        cycle_id=inst.cycle_id,
        stage=inst.name,
        wait=wait,
        key=key,
        timeout_s=max(60, int(timeout.total_seconds())) if timeout else 0,
        attempt=inst.attempt,
        done=progress.done,
        total=progress.total,
        due_at=inst.due_at,
    )


def _mail_hr(
    session: Session,
    cycle: Cycle,
    inst: StageInstance,
    event: str,
    extra: dict[str, Any] | None = None,
) -> None:
    notify(
        session,
        cycle,
        cycle_policy_or_none(cycle),
        event,
        [],
        f"{inst.name}:{inst.attempt}",
        {"stage": inst.name, **(extra or {})},
        due_at=inst.due_at,
    )
