"""The audit page: the event log, filtered and paged, and whether its chain is intact."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from perfcycle.domain import audit
from perfcycle.domain.models import AuditEvent

AUDIT_PAGE_SIZE = 50


@dataclass(frozen=True)
class AuditFilter:
    cycle_id: int | None = None
    person: str = ""
    action: str = ""


@dataclass(frozen=True)
class AuditPage:
    events: list[AuditEvent]
    page: int
    pages: int
    total: int


def audit_page(session: Session, wanted: AuditFilter, page: int) -> AuditPage:
    """Newest first; `person` matches the actor or appears in the subject."""
    conditions: list[Any] = []
    if wanted.cycle_id is not None:
        conditions.append(AuditEvent.cycle_id == wanted.cycle_id)
    if wanted.person:
        conditions.append(
            or_(
                AuditEvent.actor == wanted.person,
                # A % or _ typed in the filter is a character to find, not a wildcard.
                AuditEvent.subject.contains(wanted.person, autoescape=True),
            )
        )
    if wanted.action:
        conditions.append(AuditEvent.action.startswith(wanted.action))
    total = session.scalar(select(func.count()).select_from(AuditEvent).where(*conditions)) or 0
    pages = max(1, -(-total // AUDIT_PAGE_SIZE))
    page = min(max(1, page), pages)
    events = session.scalars(
        select(AuditEvent)
        .where(*conditions)
        .order_by(AuditEvent.id.desc())
        .offset((page - 1) * AUDIT_PAGE_SIZE)
        .limit(AUDIT_PAGE_SIZE)
    ).all()
    return AuditPage(list(events), page, pages, total)


def audit_actions(session: Session) -> list[str]:
    return list(session.scalars(select(AuditEvent.action).distinct().order_by(AuditEvent.action)))


def verify_chain(session: Session) -> audit.VerifyReport:
    return audit.verify(session)
