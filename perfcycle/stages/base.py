"""The contract between the engine and a stage's records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from sqlalchemy.orm import Session

from perfcycle.models import Cycle, StageInstance
from perfcycle.policy import Policy, Role


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
    # submit_goals, approve_goals, evaluate, record_interview, acknowledge_interview,
    # close_plan, answer_results (perfcycle.reminders words them in the reader's language).
    action: str
    # The portal task its link opens (TaskToken.task_kind / task_ref).
    kind: str
    ref: str
    # Names of the people the task is about (ratees, reports), sorted.
    subjects: tuple[str, ...] = ()


@runtime_checkable
class PendingWork(Protocol):
    """A stage where people have tasks of their own (policy.PEOPLE_STAGES)."""

    def pending(
        self, session: Session, cycle: Cycle, policy: Policy, stage: StageInstance
    ) -> dict[str, list[PendingTask]]:
        """Employee id -> their unfinished tasks in this stage; people who are done are absent."""
        ...


class StageHandler(Protocol):
    def enter(
        self, session: Session, cycle: Cycle, policy: Policy, stage: StageInstance
    ) -> dict[str, Any]:
        """Create the stage's records (and their outbox mail) that do not exist yet.

        Returns counts for the stage summary, e.g. {"interviews_created": 12}. Called on every
        (re-)run of the flow: insert with natural keys, never blindly.
        """
        ...

    def progress(
        self, session: Session, cycle: Cycle, policy: Policy, stage: StageInstance
    ) -> Progress:
        """How many of the stage's units of work are done, out of how many."""
        ...

    def close(
        self, session: Session, cycle: Cycle, policy: Policy, stage: StageInstance
    ) -> dict[str, Any]:
        """Close what is still open (mark it expired/missed/lapsed) and return summary counts."""
        ...
