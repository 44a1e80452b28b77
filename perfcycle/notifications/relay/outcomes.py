"""Recording what a delivery attempt came to: sent, retried with backoff, or failed for good.

A row goes sending -> sent | pending again (temporary failure, retried with backoff) | failed
(permanent failure, or too many attempts). A failure for good is audited; a delivered row
forgets its task links.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal, cast

from sqlalchemy import Table, bindparam, or_, select, update
from sqlalchemy.orm import Session

from perfcycle.core import clock
from perfcycle.core.settings import get_settings
from perfcycle.domain import audit
from perfcycle.domain.models import OutboxMessage
from perfcycle.notifications.notify import without_links

BACKOFF_BASE = timedelta(seconds=30)
BACKOFF_CAP = timedelta(hours=1)
BACKOFF_JITTER = 0.2
ERROR_MAX_CHARS = 2000

Status = Literal["sent", "temporary", "permanent"]


@dataclass(frozen=True)
class Outcome:
    """What one delivery attempt came to. `attempts` is the row's count before this attempt."""

    id: int
    attempts: int
    status: Status
    error: str | None = None
    # False when no SMTP server could be reached: an outage, however long, is not the message's
    # fault, so it never uses up the message's attempts (the backoff still grows to its cap).
    reached_server: bool = True


@dataclass(frozen=True)
class RelayReport:
    sent: int = 0
    retried: int = 0
    failed: int = 0
    batches: int = 0
    failed_ids: tuple[int, ...] = field(default=())

    @property
    def handled(self) -> int:
        return self.sent + self.retried + self.failed

    def __add__(self, other: RelayReport) -> RelayReport:
        return RelayReport(
            self.sent + other.sent,
            self.retried + other.retried,
            self.failed + other.failed,
            self.batches + other.batches,
            self.failed_ids + other.failed_ids,
        )


def backoff(attempts: int, rng: random.Random | None = None) -> timedelta:
    """Delay before the next try after `attempts` failed ones: 30 s, 1 min, 2 min ... 1 h,
    +-20% so that rows that failed together do not all come back in the same second."""
    exponent = min(max(attempts - 1, 0), 20)
    base = min(BACKOFF_BASE * (2**exponent), BACKOFF_CAP)
    jitter = 1 + BACKOFF_JITTER * (2 * (rng or random).random() - 1)
    return base * jitter


def record_outcomes(
    session: Session,
    outcomes: Sequence[Outcome],
    now: datetime | None = None,
    max_attempts: int | None = None,
) -> RelayReport:
    """Write the outcomes to the rows; an audit event for each row that failed for good."""
    if not outcomes:
        return RelayReport()
    now = now or clock.now()
    limit = max_attempts or get_settings().mail_max_attempts
    table = cast(Table, OutboxMessage.__table__)
    sent = [o for o in outcomes if o.status == "sent"]
    retry = [
        o
        for o in outcomes
        if o.status == "temporary" and (o.attempts + 1 < limit or not o.reached_server)
    ]
    settled = {o.id for o in sent} | {o.id for o in retry}
    failed = [o for o in outcomes if o.id not in settled]
    if sent:
        # Also from pending: a claim that expired while we were sending is still delivered.
        session.execute(
            update(table)
            .where(
                table.c.id == bindparam("oid"),
                # IN (...) would be an expanding parameter, which executemany refuses.
                or_(table.c.state == "sending", table.c.state == "pending"),
            )
            .values(state="sent", sent_at=now, attempts=bindparam("n"), last_error=None),
            [{"oid": o.id, "n": o.attempts + 1} for o in sent],
        )
        _forget_links(session, [o.id for o in sent])
    if retry:
        session.execute(
            update(table)
            .where(table.c.id == bindparam("oid"), table.c.state == "sending")
            .values(
                state="pending",
                attempts=bindparam("n"),
                next_attempt_at=bindparam("due"),
                last_error=bindparam("err"),
                claimed_by=None,
                claimed_at=None,
            ),
            [
                {
                    "oid": o.id,
                    "n": o.attempts + 1,
                    "due": now + backoff(o.attempts + 1),
                    "err": _clip(o.error),
                }
                for o in retry
            ],
        )
    if failed:
        session.execute(
            update(table)
            .where(table.c.id == bindparam("oid"), table.c.state == "sending")
            .values(state="failed", attempts=bindparam("n"), last_error=bindparam("err")),
            [{"oid": o.id, "n": o.attempts + 1, "err": _final_error(o)} for o in failed],
        )
    _audit_failures(session, failed)
    return RelayReport(len(sent), len(retry), len(failed), 1, tuple(o.id for o in failed))


def _forget_links(session: Session, ids: Sequence[int]) -> None:
    """Blank the task links of delivered rows (see notify.without_links); rows without any are
    left as they are."""
    rows = session.execute(
        select(OutboxMessage.id, OutboxMessage.context).where(OutboxMessage.id.in_(ids))
    ).tuples()
    scrubbed = [
        {"oid": oid, "ctx": kept}
        for oid, context in rows
        if (kept := without_links(context or {})) != context
    ]
    if scrubbed:
        table = cast(Table, OutboxMessage.__table__)
        session.execute(
            update(table).where(table.c.id == bindparam("oid")).values(context=bindparam("ctx")),
            scrubbed,
        )


def _audit_failures(session: Session, failed: Sequence[Outcome]) -> None:
    """A mail that will never arrive is an event someone must act on; deliveries and retries
    are bookkeeping the row itself keeps (state, attempts, sent_at, last_error)."""
    if not failed:
        return
    rows = {
        row.id: row
        for row in session.execute(
            select(
                OutboxMessage.id,
                OutboxMessage.cycle_id,
                OutboxMessage.recipient_email,
                OutboxMessage.template,
            ).where(OutboxMessage.id.in_([o.id for o in failed]))
        )
    }
    for outcome in failed:
        row = rows.get(outcome.id)
        audit.record(
            session,
            actor=audit.SYSTEM,
            action="outbox.failed",
            subject=f"outbox:{outcome.id}",
            cycle_id=row.cycle_id if row else None,
            before={"state": "sending", "attempts": outcome.attempts},
            after={
                "state": "failed",
                "attempts": outcome.attempts + 1,
                "recipient": row.recipient_email if row else None,
                "template": row.template if row else None,
                "error": _final_error(outcome),
            },
        )


def _final_error(outcome: Outcome) -> str:
    if outcome.status == "temporary":
        return _clip(f"gave up after {outcome.attempts + 1} attempts: {outcome.error}")
    return _clip(outcome.error)


def _clip(error: str | None) -> str:
    return (error or "unknown error")[:ERROR_MAX_CHARS]
