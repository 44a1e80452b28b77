"""The transactional outbox: stages write mail here in the same transaction as their change.

The idempotency key (cycle:recipient:template:occurrence) is unique, so a re-run adds nothing.
Sending is mail_relay's job; this module enqueues, lists, and re-queues what failed for good.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from perfcycle.core import clock
from perfcycle.core.db import insert_ignore
from perfcycle.core.errors import InvalidInput, Problem
from perfcycle.domain import audit
from perfcycle.domain.models import OutboxMessage


@dataclass(frozen=True)
class Mail:
    cycle_id: int | None
    recipient_id: str | None
    recipient_email: str
    locale: str
    template: str
    occurrence: str
    context: dict[str, Any] = field(default_factory=dict)

    @property
    def idempotency_key(self) -> str:
        return f"{self.cycle_id or '-'}:{self.recipient_id or self.recipient_email}:" \
            f"{self.template}:{self.occurrence}"


def enqueue(session: Session, mails: Iterable[Mail]) -> int:
    """Add the mails whose key is new; returns how many were added."""
    now = clock.now()
    rows = [
        {
            "idempotency_key": m.idempotency_key,
            "cycle_id": m.cycle_id,
            "recipient_id": m.recipient_id,
            "recipient_email": m.recipient_email,
            "locale": m.locale,
            "template": m.template,
            "context": m.context,
            "state": "pending",
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
        }
        for m in mails
    ]
    return insert_ignore(session, OutboxMessage.__table__, rows)  # type: ignore[arg-type]


def outbox_rows(
    session: Session,
    failed_only: bool = False,
    cycle_id: int | None = None,
    *,
    without_cycle: bool = False,
) -> list[dict[str, Any]]:
    """The outbox in id order: what `outbox list --json` prints and the HR views show; one
    cycle's mail with `cycle_id`, the mail of no cycle (digests, sign-in links) with
    `without_cycle`."""
    query = select(OutboxMessage).order_by(OutboxMessage.id)
    if failed_only:
        query = query.where(OutboxMessage.state == "failed")
    query = query.where(*_scope(cycle_id, without_cycle))
    return [
        {
            "id": row.id,
            "cycle_id": row.cycle_id,
            "recipient": row.recipient_email,
            "template": row.template,
            "state": row.state,
            "attempts": row.attempts,
            "next_attempt_at": row.next_attempt_at.isoformat() if row.next_attempt_at else None,
            "sent_at": row.sent_at.isoformat() if row.sent_at else None,
            "last_error": row.last_error,
        }
        for row in session.scalars(query)
    ]


def requeue(
    session: Session,
    ids: Sequence[int],
    actor: str,
    cycle_id: int | None = None,
    *,
    without_cycle: bool = False,
) -> list[int]:
    """Failed rows back to pending with a fresh count of attempts, each with an audit event.

    All-or-nothing: an unknown id, a row that is not failed, or a row outside the scope asked
    for (`cycle_id`, `without_cycle`, as outbox_rows) changes nothing.
    """
    wanted = list(dict.fromkeys(ids))
    # A row outside the scope is, to this caller, no row at all.
    query = select(OutboxMessage).where(
        OutboxMessage.id.in_(wanted), *_scope(cycle_id, without_cycle)
    )
    rows = {row.id: row for row in session.scalars(query)}
    problems = [_problem(i, rows.get(i)) for i in wanted]
    found = [p for p in problems if p is not None]
    if found:
        raise InvalidInput(found)
    now = clock.now()
    for message_id in wanted:
        row = rows[message_id]
        before = {"state": row.state, "attempts": row.attempts, "last_error": row.last_error}
        row.state = "pending"
        row.attempts = 0
        row.next_attempt_at = now
        row.claimed_by = None
        row.claimed_at = None
        row.last_error = None
        audit.record(
            session,
            actor=actor,
            action="outbox.retried",
            subject=f"outbox:{row.id}",
            cycle_id=row.cycle_id,
            before=before,
            after={"state": "pending", "attempts": 0, "recipient": row.recipient_email},
        )
    return wanted


def _problem(message_id: int, row: OutboxMessage | None) -> Problem | None:
    if row is None:
        return Problem(f"no outbox message with id {message_id}", field="ID")
    if row.state != "failed":
        return Problem(
            f"outbox message {message_id} is {row.state}, only failed messages can be retried",
            field="ID",
        )
    return None


def _scope(cycle_id: int | None, without_cycle: bool) -> list[Any]:
    if without_cycle:
        return [OutboxMessage.cycle_id.is_(None)]
    return [] if cycle_id is None else [OutboxMessage.cycle_id == cycle_id]


def state_counts(session: Session, cycle_id: int | None = None) -> dict[str, int]:
    """Rows per state, every state present (zero if none); one cycle's if `cycle_id` is given."""
    counts = dict.fromkeys(("pending", "sending", "sent", "failed"), 0)
    query = select(OutboxMessage.state, func.count()).group_by(OutboxMessage.state)
    if cycle_id is not None:
        query = query.where(OutboxMessage.cycle_id == cycle_id)
    counts.update({state: int(n) for state, n in session.execute(query).tuples()})
    return counts
