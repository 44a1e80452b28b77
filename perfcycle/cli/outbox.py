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

from perfcycle.notifications.outbox import outbox_rows, requeue

ERROR_COLUMN = 70


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
    from perfcycle.core.db import session_scope
    from perfcycle.core.migrate import upgrade

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
