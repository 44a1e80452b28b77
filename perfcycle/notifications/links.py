"""Portal links in mails: a random, expiring, single-use token bound to one person's task.

A link is `{portal_base_url}/t/{token}`. The database keeps only sha256(token): a copy of the
database (a backup, a replica) holds no usable link. Opening the link (GET) resolves it; only the
POST that completes the task consumes it, so mail scanners that follow links use up nothing.

Task kinds and refs the mails use today (the portal routes on them):
  goals            target_setting:<attempt>   the employee agrees and submits their goals
  goals_approval   target_setting:<attempt>   a manager approves their reports' goals (digest)
  evaluation       evaluation:<attempt>       a rater's pending evaluation forms in the cycle
  results          cycle:<cycle id>           the employee reads their released results
  interview        interview:<interview id>   the employee's interview
  interviews       interview:<attempt>        a manager's interviews to hold and record
  interview_ack    interview:<interview id>   the employee acknowledges the record
  improvement_plan plan:<plan id>             the plan (employee and owner)
  improvement_checkin  plan:<plan id>:<YYYY-MM>  the monthly check-in
  appeal           appeal:<appeal id>         accept the results or appeal them
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from perfcycle.core import clock
from perfcycle.core.errors import InvalidInput, Problem
from perfcycle.core.settings import get_settings
from perfcycle.domain import audit
from perfcycle.domain.models import TaskToken

TOKEN_BYTES = 32
LINK_PATH = "/t/"
# secrets.token_urlsafe(32) is 43 characters; anything far longer is not one of ours.
MAX_TOKEN_CHARS = 100
KIND_CHARS = 40
REF_CHARS = 200


@dataclass(frozen=True)
class LinkRequest:
    """The task a link opens, for whom, until when."""

    person_id: str
    cycle_id: int | None
    task_kind: str
    task_ref: str
    expires_at: datetime


@dataclass(frozen=True)
class NewLink:
    """A link made but not yet stored: its URL (goes into the mail) and its token row."""

    url: str
    row: dict[str, Any]


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def link_url(token: str) -> str:
    return f"{get_settings().portal_base_url.rstrip('/')}{LINK_PATH}{token}"


def token_of(url: str) -> str:
    """The token at the end of a link (what the portal's /t/{token} route receives)."""
    return url.rsplit(LINK_PATH, 1)[-1]


def new_link(request: LinkRequest, now: datetime) -> NewLink:
    """A fresh random token for `request`; nothing is written until save_links."""
    problems = _request_problems(request, now)
    if problems:
        raise InvalidInput(problems)
    token = secrets.token_urlsafe(TOKEN_BYTES)
    row = {
        "token_hash": hash_token(token),
        "person_id": request.person_id,
        "task_kind": request.task_kind,
        "cycle_id": request.cycle_id,
        "task_ref": request.task_ref,
        "created_at": now,
        "expires_at": request.expires_at,
        "used_at": None,
    }
    return NewLink(link_url(token), row)


def save_links(session: Session, links: Sequence[NewLink]) -> None:
    if links:
        session.execute(insert(TaskToken), [link.row for link in links])


def issue_link(
    session: Session,
    person_id: str,
    cycle_id: int | None,
    task_kind: str,
    task_ref: str,
    expires_at: datetime,
) -> str:
    """Store a new token for this task and return its link."""
    link = new_link(LinkRequest(person_id, cycle_id, task_kind, task_ref, expires_at), clock.now())
    save_links(session, [link])
    return link.url


def resolve(session: Session, token: str, now: datetime) -> TaskToken | None:
    """The token's row; None when unknown or expired. A used token is returned (used_at set)."""
    if not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN_CHARS:
        return None
    row = session.scalar(select(TaskToken).where(TaskToken.token_hash == hash_token(token)))
    if row is None or now >= row.expires_at:
        return None
    return row


def consume(session: Session, token_row: TaskToken, now: datetime) -> None:
    """Use the link up, once: of two requests racing with the same link, exactly one succeeds."""
    result = session.execute(
        update(TaskToken)
        .where(
            TaskToken.id == token_row.id,
            TaskToken.used_at.is_(None),
            TaskToken.expires_at > now,
        )
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    if getattr(result, "rowcount", 0) != 1:
        session.refresh(token_row)
        raise InvalidInput([_unusable(token_row)])
    token_row.used_at = now
    audit.record(
        session,
        actor=token_row.person_id,
        action="link.used",
        subject=f"task_token:{token_row.id}",
        cycle_id=token_row.cycle_id,
        after={"task_kind": token_row.task_kind, "task_ref": token_row.task_ref},
    )


def _unusable(row: TaskToken) -> Problem:
    if row.used_at is not None:
        return Problem(f"this link was already used at {_when(row.used_at)}", field="token")
    return Problem(f"this link expired at {_when(row.expires_at)}", field="token")


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _request_problems(request: LinkRequest, now: datetime) -> list[Problem]:
    problems = []
    if not request.person_id:
        problems.append(Problem("a link belongs to one person", field="person_id"))
    if not request.task_kind or len(request.task_kind) > KIND_CHARS:
        problems.append(
            Problem(f"must be 1..{KIND_CHARS} characters: {request.task_kind!r}", field="task_kind")
        )
    if not request.task_ref or len(request.task_ref) > REF_CHARS:
        problems.append(
            Problem(f"must be 1..{REF_CHARS} characters: {request.task_ref!r}", field="task_ref")
        )
    if request.expires_at.tzinfo is None:
        problems.append(Problem("must be timezone-aware (UTC)", field="expires_at"))
    elif request.expires_at <= now:
        problems.append(
            Problem(f"{request.expires_at.isoformat()} is not in the future", field="expires_at")
        )
    return problems
