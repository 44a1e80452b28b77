"""`perfcycle outbox list [--failed] [--json]` and `perfcycle outbox retry ID...`.

HR's tools for mail that did not go out: see what failed and why (the SMTP server's reply), fix
the cause (an address, a template), re-queue. The JSON shape of `list --json` is a contract.
"""

from __future__ import annotations

import argparse
import getpass
import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from perfcycle import audit, clock
from perfcycle.errors import InvalidInput, Problem
from perfcycle.models import OutboxMessage

ERROR_COLUMN = 70


def outbox_rows(session: Session, failed_only: bool = False) -> list[dict[str, Any]]:
    """The outbox in id order: what `list --json` prints and the HR view shows."""
    query = select(OutboxMessage).order_by(OutboxMessage.id)
    if failed_only:
        query = query.where(OutboxMessage.state == "failed")
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


def requeue(session: Session, ids: Sequence[int], actor: str) -> list[int]:
    """Failed rows back to pending with a fresh count of attempts, each with an audit event.

    All-or-nothing: an unknown id or a row that is not failed changes nothing.
    """
    wanted = list(dict.fromkeys(ids))
    rows = {
        row.id: row
        for row in session.scalars(select(OutboxMessage).where(OutboxMessage.id.in_(wanted)))
    }
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


# ---------------------------------------------------------------- commands


def list_command(failed_only: bool, as_json: bool) -> int:
    with _session() as session:
        rows = outbox_rows(session, failed_only)
    if as_json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return 0
    print(format_table(rows))
    return 0


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = [f"{'id':>6}  {'recipient':<32} {'template':<24} {'state':<8} {'tries':>5}  last error"]
    for r in rows:
        error = " ".join((r["last_error"] or "").split())
        if len(error) > ERROR_COLUMN:
            error = error[: ERROR_COLUMN - 1] + "…"
        lines.append(
            f"{r['id']:>6}  {r['recipient']:<32} {r['template']:<24} {r['state']:<8} "
            f"{r['attempts']:>5}  {error}"
        )
    lines.append(f"{len(rows)} message(s)")
    return "\n".join(lines)


def retry_command(ids: list[int]) -> int:
    with _session() as session:
        requeued = requeue(session, ids, actor=_actor())
    print(f"Re-queued {len(requeued)} message(s): {', '.join(map(str, requeued))}")
    return 0


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _session() -> Any:
    from perfcycle.db import session_scope
    from perfcycle.migrate import upgrade

    upgrade()
    return session_scope()


def _list(args: argparse.Namespace) -> int:
    return list_command(args.failed, args.json)


def _retry(args: argparse.Namespace) -> int:
    return retry_command(args.ids)


def register(subparsers: Any) -> None:
    """Add `outbox list` and `outbox retry` to perfcycle's argparse subparsers."""
    outbox = subparsers.add_parser("outbox", help="outgoing mail")
    commands = outbox.add_subparsers(dest="outbox_command", required=True)
    text = "list outgoing mail: id, recipient, template, state, attempts, last error"
    p = commands.add_parser("list", help=text, description=text)
    p.add_argument("--failed", action="store_true", help="only messages that failed for good")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_list)
    text = "re-queue failed messages (attempts start again from zero)"
    p = commands.add_parser("retry", help=text, description=text)
    p.add_argument("ids", nargs="+", type=int, metavar="ID")
    p.set_defaults(func=_retry)
