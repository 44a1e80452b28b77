"""The organisation chart: `perfcycle org import FILE.csv`.

The file is the whole organisation. Every row is checked before anything is written; employees
missing from the file are deactivated, never deleted, because past cycles reference them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from perfcycle.connectors.csv import CsvRow, read_csv, required_problems
from perfcycle.core.errors import InvalidInput, Problem
from perfcycle.domain import audit
from perfcycle.domain.models import Department, DepartmentType, Employee
from perfcycle.notifications.addresses import valid_address

COLUMNS = (
    "employee_id",
    "name",
    "email",
    "department_id",
    "department_name",
    "department_type",
    "manager_id",
    "locale",
)
REQUIRED = COLUMNS[:6]
# Column widths of the tables, so an over-long value is a line-numbered error, not a DB error.
MAX_LENGTH = {
    "employee_id": 64,
    "name": 200,
    "email": 320,
    "department_id": 64,
    "department_name": 200,
    "manager_id": 64,
}
LOCALES = {"zh-cn": "zh-CN", "en": "en"}
DEFAULT_LOCALE = "zh-CN"
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")
DEPARTMENT_TYPES = {t.value for t in DepartmentType}


@dataclass(frozen=True)
class OrgImportReport:
    created: int
    updated: int
    deactivated: int
    unchanged: int
    departments_created: int
    departments_updated: int


@dataclass(frozen=True)
class OrgRow:
    line: int
    employee_id: str
    name: str
    email: str
    department_id: str
    department_name: str
    department_type: str
    manager_id: str | None
    locale: str


# ---------------------------------------------------------------- validation


def _field_problems(row: CsvRow, file: str) -> list[Problem]:
    v = row.values
    problems = required_problems(row, REQUIRED, file)
    problems += [
        Problem(f"longer than {n} characters", file, row.line, c)
        for c, n in MAX_LENGTH.items()
        if len(v[c]) > n
    ]
    if v["email"] and not (EMAIL.match(v["email"]) and valid_address(v["email"])):
        problems.append(Problem(f"not an email address: {v['email']!r}", file, row.line, "email"))
    if v["department_type"] and v["department_type"] not in DEPARTMENT_TYPES:
        problems.append(
            Problem(
                f"unknown department type {v['department_type']!r}; expected one of "
                + ", ".join(sorted(DEPARTMENT_TYPES)),
                file,
                row.line,
                "department_type",
            )
        )
    if v["locale"] and v["locale"].lower() not in LOCALES:
        problems.append(
            Problem(
                f"unknown locale {v['locale']!r}; expected zh-CN or en", file, row.line, "locale"
            )
        )
    return problems


def _to_org_row(row: CsvRow) -> OrgRow:
    v = row.values
    return OrgRow(
        line=row.line,
        employee_id=v["employee_id"],
        name=v["name"],
        email=v["email"],
        department_id=v["department_id"],
        department_name=v["department_name"],
        department_type=v["department_type"],
        manager_id=v["manager_id"] or None,
        locale=LOCALES.get(v["locale"].lower(), DEFAULT_LOCALE),
    )


def _duplicate_problems(rows: list[OrgRow], file: str) -> tuple[dict[str, OrgRow], list[Problem]]:
    """First row per employee id, and a problem for every repeat."""
    first: dict[str, OrgRow] = {}
    problems: list[Problem] = []
    for row in rows:
        if not row.employee_id:
            continue
        if row.employee_id in first:
            problems.append(
                Problem(
                    f"duplicate employee_id {row.employee_id} "
                    f"(first on line {first[row.employee_id].line})",
                    file,
                    row.line,
                    "employee_id",
                )
            )
        else:
            first[row.employee_id] = row
    return first, problems


def _department_conflicts(
    rows: list[OrgRow], file: str, column: str, what: str, value_of: Callable[[OrgRow], str]
) -> list[Problem]:
    """A department's name or type must be the same on every row that names it."""
    first: dict[str, tuple[str, int]] = {}
    problems: list[Problem] = []
    for row in rows:
        value = value_of(row)
        if not row.department_id or not value:
            continue
        seen, line = first.setdefault(row.department_id, (value, row.line))
        if seen != value:
            problems.append(
                Problem(
                    f"department {row.department_id} {what} {seen!r} on line {line}, "
                    f"{value!r} here",
                    file,
                    row.line,
                    column,
                )
            )
    return problems


def _department_problems(rows: list[OrgRow], file: str) -> list[Problem]:
    def valid_type(row: OrgRow) -> str:
        # An unknown type is already reported on its own line; comparing it would say it twice.
        return row.department_type if row.department_type in DEPARTMENT_TYPES else ""

    return _department_conflicts(
        rows, file, "department_name", "is named", lambda r: r.department_name
    ) + _department_conflicts(rows, file, "department_type", "has type", valid_type)


def _manager_problems(rows: list[OrgRow], known: set[str], file: str) -> list[Problem]:
    problems: list[Problem] = []
    for row in rows:
        if row.manager_id is None:
            continue
        if row.manager_id == row.employee_id:
            problems.append(
                Problem(f"{row.employee_id} cannot manage themself", file, row.line, "manager_id")
            )
        elif row.manager_id not in known:
            problems.append(
                Problem(
                    f"manager {row.manager_id} is not in the file (the file must list the whole "
                    "organisation)",
                    file,
                    row.line,
                    "manager_id",
                )
            )
    return problems


def find_management_cycles(manager_of: dict[str, str]) -> list[list[str]]:
    """Every cycle in the employee -> manager graph, each as the member ids in chain order."""
    done: set[str] = set()
    cycles: list[list[str]] = []
    for start in manager_of:
        path: list[str] = []
        on_path: dict[str, int] = {}
        node: str | None = start
        while node is not None and node not in done and node not in on_path:
            on_path[node] = len(path)
            path.append(node)
            node = manager_of.get(node)
        if node is not None and node in on_path:
            cycles.append(path[on_path[node] :])
        done.update(path)
    return cycles


def _cycle_problems(first: dict[str, OrgRow], file: str) -> list[Problem]:
    manager_of = {
        eid: row.manager_id
        for eid, row in first.items()
        if row.manager_id is not None and row.manager_id in first and row.manager_id != eid
    }
    problems: list[Problem] = []
    for members in find_management_cycles(manager_of):
        # Start the chain at the member listed first in the file, and report it on that line.
        at = min(range(len(members)), key=lambda i: first[members[i]].line)
        chain = members[at:] + members[:at]
        problems.append(
            Problem(
                "management cycle: " + " -> ".join([*chain, chain[0]]),
                file,
                first[chain[0]].line,
                "manager_id",
            )
        )
    return problems


def validate_org_rows(rows: list[CsvRow], file: str) -> tuple[list[OrgRow], list[Problem]]:
    """The rows as OrgRows (first occurrence per employee) and every problem found in them."""
    problems: list[Problem] = []
    for row in rows:
        problems += _field_problems(row, file)
    org_rows = [_to_org_row(r) for r in rows]
    first, duplicates = _duplicate_problems(org_rows, file)
    problems += duplicates
    problems += _department_problems(org_rows, file)
    problems += _manager_problems(org_rows, set(first), file)
    problems += _cycle_problems(first, file)
    problems.sort(key=lambda p: (p.line or 0, COLUMNS.index(p.field) if p.field in COLUMNS else 99))
    return list(first.values()), problems


# ---------------------------------------------------------------- applying


def _managers_first(rows: Iterable[OrgRow], manager_of: dict[str, str | None]) -> list[OrgRow]:
    depth: dict[str, int] = {}

    def depth_of(eid: str) -> int:
        chain: list[str] = []
        node: str | None = eid
        while node is not None and node not in depth:
            chain.append(node)
            node = manager_of.get(node)
        base = depth[node] if node is not None else -1
        for member in reversed(chain):
            base += 1
            depth[member] = base
        return depth[eid]

    return sorted(rows, key=lambda r: depth_of(r.employee_id))


def _employee_values(row: OrgRow) -> dict[str, Any]:
    return {
        "id": row.employee_id,
        "name": row.name,
        "email": row.email,
        "department_id": row.department_id,
        "manager_id": row.manager_id,
        "locale": row.locale,
        "active": True,
    }


def _apply_departments(session: Session, rows: list[OrgRow]) -> tuple[int, int]:
    wanted: dict[str, dict[str, Any]] = {}
    for row in rows:
        wanted.setdefault(
            row.department_id,
            {"id": row.department_id, "name": row.department_name, "type": row.department_type},
        )
    existing = {
        d.id: {"id": d.id, "name": d.name, "type": d.type}
        for d in session.execute(select(Department.id, Department.name, Department.type))
    }
    new = [v for k, v in wanted.items() if k not in existing]
    changed = [v for k, v in wanted.items() if k in existing and existing[k] != v]
    if new:
        session.execute(insert(Department), new)
    if changed:
        session.execute(update(Department), changed)
    return len(new), len(changed)


def _apply_employees(session: Session, rows: list[OrgRow]) -> tuple[int, int, int, int]:
    columns = (
        Employee.id,
        Employee.name,
        Employee.email,
        Employee.department_id,
        Employee.manager_id,
        Employee.locale,
        Employee.active,
    )
    existing = {r.id: dict(r._mapping) for r in session.execute(select(*columns))}
    wanted = {row.employee_id: _employee_values(row) for row in rows}
    manager_of = {eid: v["manager_id"] for eid, v in wanted.items()}
    new = [
        _employee_values(r)
        for r in _managers_first((r for r in rows if r.employee_id not in existing), manager_of)
    ]
    changed = [v for k, v in wanted.items() if k in existing and existing[k] != v]
    leavers = [
        {"id": k, "active": False} for k, v in existing.items() if k not in wanted and v["active"]
    ]
    # New rows go first so that existing employees may be moved under a new manager.
    if new:
        session.execute(insert(Employee), new)
    if changed:
        session.execute(update(Employee), changed)
    if leavers:
        session.execute(update(Employee), leavers)
    return len(new), len(changed), len(leavers), len(wanted) - len(new) - len(changed)


def import_org_csv(session: Session, path: Path, actor: str = "hr") -> OrgImportReport:
    """Make the employees and departments in the database those of the file, all or nothing."""
    file = str(path)
    csv_rows, problems = read_csv(path, COLUMNS)
    rows, row_problems = validate_org_rows(csv_rows, file)
    problems += row_problems
    if not csv_rows and not problems:
        problems.append(Problem("no employees in the file", file, 2))
    if problems:
        raise InvalidInput(sorted(problems, key=lambda p: p.line or 0))
    departments_created, departments_updated = _apply_departments(session, rows)
    created, updated, deactivated, unchanged = _apply_employees(session, rows)
    report = OrgImportReport(
        created=created,
        updated=updated,
        deactivated=deactivated,
        unchanged=unchanged,
        departments_created=departments_created,
        departments_updated=departments_updated,
    )
    audit.record(
        session,
        actor=actor,
        action="org.imported",
        subject=f"org:{path.name}",
        after={"file": path.name, **report.__dict__},
    )
    return report
