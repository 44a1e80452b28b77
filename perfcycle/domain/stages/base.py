"""The contract between the engine and a stage's records."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from perfcycle.core.errors import InvalidInput, Problem
from perfcycle.domain import audit
from perfcycle.domain.models import Appeal, Cycle, ImprovementPlan, Interview, StageInstance
from perfcycle.domain.policy.schema import Policy
from perfcycle.notifications.events import Role
from perfcycle.notifications.notify import Recipient, notify
from perfcycle.notifications.task_kinds import TASK_KINDS, TaskKind
from perfcycle.notifications.vocabulary import TaskAction


@dataclass(frozen=True)
class StageContext:
    """What a handler works on: one cycle's stage, with the cycle's policy, in one session."""

    session: Session
    cycle: Cycle
    policy: Policy
    stage: StageInstance


@dataclass(frozen=True)
class Progress:
    done: int
    total: int

    @property
    def complete(self) -> bool:
        return self.done >= self.total


@dataclass(frozen=True)
class PendingTask:
    """One person's unfinished work in a stage: what reminders list and escalations report."""

    role: Role
    # What the person is asked to do (perfcycle.notifications.vocabulary words it).
    action: TaskAction
    # The portal task its link opens (TaskToken.task_kind / task_ref); the registry
    # (perfcycle.notifications.task_kinds) says which action each kind is.
    kind: TaskKind
    ref: str
    # Names of the people the task is about (ratees, reports), sorted.
    subjects: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if TASK_KINDS[self.kind].action != self.action:
            raise ValueError(f"a {self.kind!r} task is not {self.action!r} (see task_kinds)")


@runtime_checkable
class PendingWork(Protocol):
    """A stage where people have tasks of their own (policy.PEOPLE_STAGES)."""

    def pending(self, ctx: StageContext) -> dict[str, list[PendingTask]]:
        """Employee id -> their unfinished tasks in this stage; people who are done are absent."""
        ...


class StageHandler(Protocol):
    def enter(self, ctx: StageContext) -> dict[str, Any]:
        """Create the stage's records (and their outbox mail) that do not exist yet.

        Returns counts for the stage summary, e.g. {"interviews_created": 12}. Called on every
        (re-)run of the flow: insert with natural keys, never blindly.
        """
        ...

    def progress(self, ctx: StageContext) -> Progress:
        """How many of the stage's units of work are done, out of how many."""
        ...

    def close(self, ctx: StageContext) -> dict[str, Any]:
        """Close what is still open (mark it expired/missed/lapsed) and return summary counts."""
        ...


# ---------------------------------------------------------------- per-employee records

# Stages whose records are one row per employee with a `state` (interview, plan, appeal).
PerEmployeeRecord = type[Interview] | type[ImprovementPlan] | type[Appeal]
R = TypeVar("R", Interview, ImprovementPlan, Appeal)


@dataclass(frozen=True)
class RecordKind(Generic[R]):
    """How one kind of per-employee record is found, checked and moved from state to state,
    so that every service changing one audits the same before/after for it."""

    model: type[R]
    stage: str
    states: tuple[str, ...]
    noun: str  # as problems name it: "no improvement plan 7"
    subject: str  # the audit subject's prefix: "improvement_plan:7"
    id_field: str  # the problem's field when the id names no record
    fields: tuple[str, ...]  # what its audit events show before and after a change

    def get(self, session: Session, record_id: int) -> R:
        record = session.get(self.model, record_id)
        if record is None:
            raise InvalidInput([Problem(f"no {self.noun} {record_id}", field=self.id_field)])
        return record

    def opened(
        self,
        ctx: StageContext,
        created: list[str],
        *,
        action: str,
        counted_as: str,
        event: str,
        recipients: Sequence[Recipient],
        occurrence: str,
        noted: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A handler's enter() once it has created the missing rows (`created` names their
        employees): audit them, mail the stage's people once per attempt, return the counts."""
        session, cycle, stage = ctx.session, ctx.cycle, ctx.stage
        if created:
            audit.record(
                session,
                actor=audit.SYSTEM,
                action=action,
                subject=f"cycle:{cycle.id}/stage:{self.stage}",
                cycle_id=cycle.id,
                after={counted_as: len(created), **(noted or {}), "employees": created},
            )
        mails = notify(
            session,
            cycle,
            ctx.policy,
            event,
            recipients,
            f"{occurrence}:{stage.attempt}",
            context,
            due_at=stage.due_at,
        )
        return {counted_as: len(created), "mails_enqueued": mails}

    def count_by_state(self, session: Session, cycle_id: int) -> dict[str, int]:
        return count_by_state(session, self.model, cycle_id, self.states)

    def close(self, ctx: StageContext, *, unfinished: str, closed_as: str) -> dict[str, Any]:
        """A handler's close(): the rows still `unfinished` become `closed_as`; returns the
        counts per state and how many were marked."""
        marked = close_unfinished(
            ctx.session,
            self.model,
            ctx.cycle,
            stage=self.stage,
            unfinished=unfinished,
            closed_as=closed_as,
        )
        return {
            **self.count_by_state(ctx.session, ctx.cycle.id),
            f"marked_{closed_as}": len(marked),
        }

    def snapshot(self, record: R) -> dict[str, Any]:
        return {name: _plain(getattr(record, name)) for name in self.fields}

    def transition(
        self,
        session: Session,
        record: R,
        *,
        actor: str,
        action: str,
        changes: Mapping[str, Any],
        noted: Mapping[str, Any] | None = None,
    ) -> R:
        """Set `changes` on the record and audit it, before and after (plus `noted`)."""
        before = self.snapshot(record)
        for name, value in changes.items():
            setattr(record, name, value)
        audit.record(
            session,
            actor=actor,
            action=action,
            subject=f"{self.subject}:{record.id}",
            cycle_id=record.cycle_id,
            before=before,
            after={**self.snapshot(record), **(noted or {})},
        )
        return record


def state_problems(state: str, allowed: Collection[str], message: str) -> list[Problem]:
    """The refusal of a record whose `state` is not one of `allowed`; `message` may name
    the {state}."""
    if state in allowed:
        return []
    return [Problem(message.format(state=state), field="state")]


def _plain(value: Any) -> Any:
    """A column's value as an audit event stores it (JSON)."""
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, list):
        return list(value)
    return value


def count_by_state(
    session: Session, model: PerEmployeeRecord, cycle_id: int, states: Sequence[str]
) -> dict[str, int]:
    """Rows of the cycle per state, every state present (0 when none)."""
    counts = dict.fromkeys(states, 0)
    rows = session.execute(
        select(model.state, func.count()).where(model.cycle_id == cycle_id).group_by(model.state)
    )
    for state, n in rows:
        counts[state] = n
    return counts


def close_unfinished(
    session: Session,
    model: PerEmployeeRecord,
    cycle: Cycle,
    *,
    stage: str,
    unfinished: str,
    closed_as: str,
) -> list[str]:
    """At the stage's end, mark the rows still `unfinished` as `closed_as`, with one audit event
    naming the employees; returns their ids (sorted)."""
    where = (model.cycle_id == cycle.id, model.state == unfinished)
    employees = list(
        session.scalars(select(model.employee_id).where(*where).order_by(model.employee_id))
    )
    if employees:
        session.execute(update(model).where(*where).values(state=closed_as))
        audit.record(
            session,
            actor=audit.SYSTEM,
            action=f"{stage}.{closed_as}",
            subject=f"cycle:{cycle.id}/stage:{stage}",
            cycle_id=cycle.id,
            before={"state": unfinished},
            after={"state": closed_as, "employees": employees},
        )
    return employees
