"""`perfcycle roles grant|revoke|list`: who holds the portal roles the org chart does not give.

`employee` and `manager` follow from the org chart; hr_admin, committee, supervision and auditor
are granted here, to an employee id or to an email address. Every grant and revoke is audited.
The JSON shape of `list --json` is a contract.
"""

from __future__ import annotations

import argparse
import getpass
import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from perfcycle.core import clock
from perfcycle.core.db import insert_ignore
from perfcycle.core.errors import InvalidInput, Problem
from perfcycle.domain import access, audit
from perfcycle.domain.models import Employee, PortalRole

GRANTABLE_ROLES = access.GRANTED_ROLES
MAX_PRINCIPAL_CHARS = 320


def normalise_principal(session: Session, principal: str) -> str:
    """An existing employee id as is, an email address in lower case; InvalidInput otherwise."""
    value = principal.strip()
    if "@" in value:
        local, _, domain = value.partition("@")
        if local and "." in domain and len(value) <= MAX_PRINCIPAL_CHARS and " " not in value:
            return value.lower()
        raise InvalidInput([Problem(f"not an email address: {principal!r}", field="PERSON")])
    if value and session.get(Employee, value) is not None:
        return value
    raise InvalidInput(
        [Problem(f"no employee with id {principal!r} (or give an email address)", field="PERSON")]
    )


def _check_role(role: str) -> None:
    if role not in GRANTABLE_ROLES:
        raise InvalidInput(
            [Problem(f"{role!r} is not one of {', '.join(GRANTABLE_ROLES)}", field="ROLE")]
        )


def grant_role(session: Session, principal: str, role: str, actor: str) -> bool:
    """Grant `role`; False (and no audit event) when it was already held."""
    _check_role(role)
    who = normalise_principal(session, principal)
    now = clock.now()
    row = {"principal": who, "role": role, "granted_by": actor, "granted_at": now}
    added = insert_ignore(session, PortalRole.__table__, [row])  # type: ignore[arg-type]
    if added:
        audit.record(
            session,
            actor=actor,
            action="portal.role_granted",
            subject=f"portal_role:{who}:{role}",
            after={"principal": who, "role": role},
        )
    return bool(added)


def revoke_role(session: Session, principal: str, role: str, actor: str) -> bool:
    """Revoke `role`; False (and no audit event) when it was not held."""
    _check_role(role)
    who = principal.strip().lower() if "@" in principal else principal.strip()
    result = session.execute(
        delete(PortalRole)
        .where(PortalRole.principal == who, PortalRole.role == role)
        .execution_options(synchronize_session=False)
    )
    removed = getattr(result, "rowcount", 0) == 1
    if removed:
        audit.record(
            session,
            actor=actor,
            action="portal.role_revoked",
            subject=f"portal_role:{who}:{role}",
            before={"principal": who, "role": role},
        )
    return removed


def role_rows(session: Session) -> list[dict[str, Any]]:
    """Every grant, by principal then role: what `list --json` prints."""
    rows = session.scalars(select(PortalRole).order_by(PortalRole.principal, PortalRole.role))
    return [
        {
            "principal": r.principal,
            "role": r.role,
            "granted_by": r.granted_by,
            "granted_at": r.granted_at.isoformat(),
        }
        for r in rows
    ]


# ---------------------------------------------------------------- commands


def _session() -> Any:
    from perfcycle.core.db import session_scope
    from perfcycle.core.migrate import upgrade

    upgrade()
    return session_scope()


def _actor(args: argparse.Namespace) -> str:
    if args.actor:
        return str(args.actor)
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _grant(args: argparse.Namespace) -> int:
    with _session() as session:
        added = grant_role(session, args.person, args.role, _actor(args))
    print(f"{'Granted' if added else 'Already held:'} {args.role} to {args.person}")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    with _session() as session:
        removed = revoke_role(session, args.person, args.role, _actor(args))
    print(f"{'Revoked' if removed else 'Not held:'} {args.role} from {args.person}")
    return 0 if removed else 1


def _list(args: argparse.Namespace) -> int:
    with _session() as session:
        rows = role_rows(session)
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
    else:
        print(format_table(rows))
    return 0


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = [f"{'person':<40} {'role':<12} {'granted by':<20} granted at"]
    lines += [
        f"{r['principal']:<40} {r['role']:<12} {r['granted_by']:<20} {r['granted_at']}"
        for r in rows
    ]
    lines.append(f"{len(rows)} grant(s)")
    return "\n".join(lines)


def register(subparsers: Any) -> None:
    """Add `roles grant|revoke|list` to perfcycle's argparse subparsers."""
    roles = subparsers.add_parser("roles", help="portal roles (HR, committees, auditors)")
    commands = roles.add_subparsers(dest="roles_command", required=True)
    for name, func, text in (
        ("grant", _grant, "grant a portal role to an employee id or email address"),
        ("revoke", _revoke, "revoke a portal role"),
    ):
        p = commands.add_parser(name, help=text, description=text)
        p.add_argument("person", metavar="PERSON", help="employee id or email address")
        p.add_argument("role", metavar="ROLE", choices=GRANTABLE_ROLES)
        p.add_argument("--actor", default=None, help="who is granting (default: cli:<user>)")
        p.set_defaults(func=func)
    text = "list portal role grants"
    p = commands.add_parser("list", help=text, description=text)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_list)
