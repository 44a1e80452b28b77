"""The contract between the engine and a stage's records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy.orm import Session

from perfcycle.models import Cycle, StageInstance
from perfcycle.policy import Policy


@dataclass(frozen=True)
class Progress:
    done: int
    total: int

    @property
    def complete(self) -> bool:
        return self.done >= self.total


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
