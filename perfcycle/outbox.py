"""The transactional outbox: stages write mail here in the same transaction as their change.

The idempotency key (cycle:recipient:template:occurrence) is unique, so a re-run adds nothing.
Sending is mail_relay's job; this module only enqueues.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from perfcycle import clock
from perfcycle.db import insert_ignore
from perfcycle.models import OutboxMessage


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
