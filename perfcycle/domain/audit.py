"""The tamper-evident audit log: every state change appends one hash-chained event.

hash = sha256(canonical JSON of the event's fields + the previous event's hash). Changing,
inserting or deleting any row breaks the chain from that row on; `verify` names the first one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import event as sa_event
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from perfcycle.core import clock
from perfcycle.domain.models import AuditEvent

GENESIS = "0" * 64
SYSTEM = "system"


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)


def event_hash(
    prev_hash: str,
    at: datetime,
    actor: str,
    action: str,
    subject: str,
    cycle_id: int | None,
    before: Any,
    after: Any,
) -> str:
    payload = _canonical(
        {
            "prev": prev_hash,
            # Microsecond precision survives every backend; anything finer would not round-trip.
            "at": at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "actor": actor,
            "action": action,
            "subject": subject,
            "cycle_id": cycle_id,
            "before": before,
            "after": after,
        }
    )
    return hashlib.sha256(payload.encode()).hexdigest()


_PENDING = "perfcycle.domain.audit.pending"


def record(
    session: Session,
    *,
    actor: str,
    action: str,
    subject: str,
    cycle_id: int | None = None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> None:
    """Add one event to the caller's transaction: it commits or rolls back with the change.

    The event joins the chain when the transaction commits (`_append_pending`), not here: the
    chain's tail is one row every writer needs, and holding it from the first change to the
    commit would make concurrent submissions wait for each other's whole request.
    """
    # JSON round-trip so what we hash is exactly what the database will give back.
    event = {
        "actor": actor,
        "action": action,
        "subject": subject,
        "cycle_id": cycle_id,
        "before": json.loads(_canonical(before)) if before is not None else None,
        "after": json.loads(_canonical(after)) if after is not None else None,
    }
    session.info.setdefault(_PENDING, []).append(event)


@sa_event.listens_for(Session, "before_commit")
def _append_pending(session: Session) -> None:
    pending: list[dict[str, Any]] = session.info.pop(_PENDING, [])
    if not pending:
        return
    session.flush()  # the change itself first, so a constraint error leaves the chain untouched
    # SQLite already holds the write lock (BEGIN IMMEDIATE); Postgres serialises appenders here,
    # from now until this commit ends.
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(727274)"))
    prev_hash = session.scalar(select(AuditEvent.hash).order_by(AuditEvent.id.desc()).limit(1))
    prev_hash = prev_hash or GENESIS
    at = clock.now()
    for fields in pending:
        digest = event_hash(
            prev_hash,
            at,
            fields["actor"],
            fields["action"],
            fields["subject"],
            fields["cycle_id"],
            fields["before"],
            fields["after"],
        )
        session.add(AuditEvent(at=at, prev_hash=prev_hash, hash=digest, **fields))
        prev_hash = digest


@sa_event.listens_for(Session, "after_rollback")
def _drop_pending(session: Session) -> None:
    session.info.pop(_PENDING, None)


@dataclass(frozen=True)
class VerifyReport:
    checked: int
    broken_id: int | None = None
    problem: str = ""

    @property
    def ok(self) -> bool:
        return self.broken_id is None


def verify(session: Session, batch: int = 5000) -> VerifyReport:
    """Recompute the whole chain in id order; report the first row that does not match."""
    prev_hash = GENESIS
    checked = 0
    last_id = 0
    while True:
        rows = session.scalars(
            select(AuditEvent).where(AuditEvent.id > last_id).order_by(AuditEvent.id).limit(batch)
        ).all()
        if not rows:
            return VerifyReport(checked=checked)
        for ev in rows:
            if ev.prev_hash != prev_hash:
                return VerifyReport(
                    checked, ev.id, "previous hash does not match the row before it "
                    "(a row was inserted, deleted or reordered)"
                )
            expected = event_hash(
                ev.prev_hash, ev.at, ev.actor, ev.action, ev.subject, ev.cycle_id, ev.before,
                ev.after,
            )
            if expected != ev.hash:
                return VerifyReport(checked, ev.id, "content does not match its hash (altered)")
            prev_hash = ev.hash
            checked += 1
            last_id = ev.id
        session.expunge_all()
