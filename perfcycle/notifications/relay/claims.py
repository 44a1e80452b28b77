"""Claiming outbox rows: which relay sends which row, and handing rows back.

The claim is what lets several relays run at once without sending a row twice: FOR UPDATE SKIP
LOCKED on PostgreSQL, one UPDATE ... RETURNING under SQLite's BEGIN IMMEDIATE. A relay that dies
mid-batch leaves rows in `sending`; once the claim is older than STALE_CLAIM they go back to
pending.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from perfcycle.domain import audit
from perfcycle.domain.models import OutboxMessage
from perfcycle.notifications.render import MailRow

# Longer than any batch can take to send, so only a relay that died leaves a claim this old.
STALE_CLAIM = timedelta(minutes=15)


class OutboxRow(MailRow, Protocol):
    """What sending needs of a claimed row (OutboxMessage and Claimed both fit)."""

    @property
    def id(self) -> int: ...
    @property
    def context(self) -> dict[str, Any]: ...
    @property
    def attempts(self) -> int: ...


@dataclass(frozen=True)
class Claimed:
    """A claimed row, detached from its session so it can cross threads and event loops."""

    id: int
    idempotency_key: str
    recipient_email: str
    locale: str
    template: str
    context: dict[str, Any]
    attempts: int

    @classmethod
    def of(cls, row: OutboxRow) -> Claimed:
        if isinstance(row, Claimed):
            return row
        return cls(
            row.id,
            row.idempotency_key,
            row.recipient_email,
            row.locale,
            row.template,
            dict(row.context or {}),
            row.attempts,
        )


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def claim_batch(session: Session, worker_id: str, limit: int, now: datetime) -> list[OutboxMessage]:
    """Claim up to `limit` due pending rows, oldest first, for this worker; commit to publish."""
    table = OutboxMessage
    due = (
        select(table.id)
        .where(table.state == "pending")
        .where(or_(table.next_attempt_at.is_(None), table.next_attempt_at <= now))
        .order_by(table.id)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        # Rows another relay holds are skipped, not waited for: relays share the queue.
        ids = list(session.scalars(due.with_for_update(skip_locked=True)))
        if not ids:
            return []
        claimable = table.id.in_(ids)
    else:
        # SQLite: the transaction began with BEGIN IMMEDIATE, so no other writer runs between
        # this statement's read and its write.
        claimable = table.id.in_(due.scalar_subquery())
    claim = (
        update(table)
        .where(claimable, table.state == "pending")
        .values(state="sending", claimed_by=worker_id, claimed_at=now)
        .returning(table)
        .execution_options(synchronize_session=False)
    )
    rows = list(session.scalars(claim))
    return sorted(rows, key=lambda row: row.id)


def release_stale_claims(
    session: Session, now: datetime, older_than: timedelta = STALE_CLAIM, max_attempts: int = 10
) -> int:
    """Rows claimed by a relay that stopped go back to pending (or fail, once out of attempts).

    Counted as an attempt: a message that kills the relay every time must not loop for ever.
    """
    table = OutboxMessage
    cutoff = now - older_than
    stale = (table.state == "sending", table.claimed_at < cutoff)
    reason = "claim expired: the relay sending it stopped before recording the result"
    exhausted = session.scalars(
        update(table)
        .where(*stale, table.attempts + 1 >= max_attempts)
        .values(state="failed", attempts=table.attempts + 1, last_error=reason)
        .returning(table.id)
        .execution_options(synchronize_session=False)
    ).all()
    released = session.scalars(
        update(table)
        .where(*stale)
        .values(
            state="pending",
            attempts=table.attempts + 1,
            next_attempt_at=now,
            claimed_by=None,
            claimed_at=None,
            last_error=reason,
        )
        .returning(table.id)
        .execution_options(synchronize_session=False)
    ).all()
    if exhausted or released:
        audit.record(
            session,
            actor=audit.SYSTEM,
            action="outbox.claims_expired",
            subject="outbox",
            after={"requeued": sorted(released), "failed": sorted(exhausted)},
        )
    return len(exhausted) + len(released)


def newest_pending_id(session: Session, cycle_id: int) -> int | None:
    """The newest unsent row of a cycle: what a trigger of the relay is about."""
    return session.scalar(
        select(func.max(OutboxMessage.id)).where(
            OutboxMessage.cycle_id == cycle_id, OutboxMessage.state == "pending"
        )
    )


def renew_claims(session: Session, ids: Sequence[int], worker_id: str, now: datetime) -> set[int]:
    """Refresh this relay's claims on `ids`; the ids it still holds (a claim that expired and
    went to another relay is not ours to send any more)."""
    if not ids:
        return set()
    held = session.scalars(
        update(OutboxMessage)
        .where(*_held_by(ids, worker_id))
        .values(claimed_at=now)
        .returning(OutboxMessage.id)
        .execution_options(synchronize_session=False)
    )
    return set(held)


def _held_by(ids: Sequence[int], worker_id: str) -> tuple[Any, ...]:
    """The rows among `ids` this worker still has claimed (and not yet recorded)."""
    return (
        OutboxMessage.id.in_(ids),
        OutboxMessage.state == "sending",
        OutboxMessage.claimed_by == worker_id,
    )


def unclaim(session: Session, ids: Sequence[int], worker_id: str) -> int:
    result = session.execute(
        update(OutboxMessage)
        .where(*_held_by(ids, worker_id))
        .values(state="pending", claimed_by=None, claimed_at=None)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)
