"""The demo organisation and ticket system: realistic shape, deterministic, importable."""

from __future__ import annotations

import sqlite3
from collections import Counter
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.orm import Session

from perfcycle.core.errors import InvalidInput
from perfcycle.devtools.demo_data import (
    MARGIN_DAYS,
    ORG_COLUMNS,
    generate_tickets,
    sample_org,
    ticket_rows,
    write_org_csv,
)
from perfcycle.domain.models import Department, Employee
from perfcycle.domain.org import import_org_csv

START, END = date(2026, 10, 1), date(2026, 12, 31)
COLUMNS = [
    "id",
    "queue",
    "assignee",
    "opened_at",
    "first_response_at",
    "resolved_at",
    "sla_hours",
    "satisfaction",
    "complaint",
    "complaint_handled_at",
    "reopened",
    "major_incident",
]


def _depths(rows: list[dict[str, str]]) -> dict[str, int]:
    manager = {r["employee_id"]: r["manager_id"] for r in rows}
    depths = {}
    for emp in manager:
        depth, current = 0, emp
        while manager[current]:
            current = manager[current]
            depth += 1
            assert depth <= len(rows), f"management cycle through {emp}"
        depths[emp] = depth
    return depths


def _in_window(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    lo, hi = datetime(2026, 10, 1), datetime(2027, 1, 1)
    return [r for r in rows if lo <= datetime.fromisoformat(r["opened_at"]) < hi]


# ---------------------------------------------------------------- organisation


def test_sample_org_has_three_departments_one_per_type_and_one_top_manager() -> None:
    rows = sample_org()
    assert len(rows) == 40
    departments = {(r["department_id"], r["department_name"], r["department_type"]) for r in rows}
    assert len(departments) == 3
    assert sorted(t for _, _, t in departments) == [
        "external_service",
        "internal_service",
        "professional_support",
    ]
    assert Counter(r["department_id"] for r in rows) == {"CS": 20, "IT": 12, "FIN": 8}
    tops = [r for r in rows if not r["manager_id"]]
    assert len(tops) == 1
    heads = [r for r in rows if r["manager_id"] == tops[0]["employee_id"]]
    assert sorted(h["department_id"] for h in heads) == ["CS", "FIN", "IT"]


def test_sample_org_people_are_unique_and_managed_top_down() -> None:
    rows = sample_org()
    ids = [r["employee_id"] for r in rows]
    assert len(set(ids)) == len(ids)
    assert len({r["email"] for r in rows}) == len(rows)
    assert len({r["name"] for r in rows}) == len(rows)
    assert all(r["email"].endswith("@example.com") for r in rows)
    locales = Counter(r["locale"] for r in rows)
    assert set(locales) == {"zh-CN", "en"} and locales["zh-CN"] > 3 * locales["en"]
    seen: set[str] = set()
    for r in rows:
        assert not r["manager_id"] or r["manager_id"] in seen, "managers come first"
        seen.add(r["employee_id"])
    depths = _depths(rows)
    managers = {r["manager_id"] for r in rows if r["manager_id"]}
    cs_leads = [r for r in rows if r["department_id"] == "CS" and depths[r["employee_id"]] == 2]
    assert cs_leads and all(lead["employee_id"] in managers for lead in cs_leads)
    # Everyone below a head stays in the head's department.
    by_id = {r["employee_id"]: r for r in rows}
    for r in rows:
        if depths[r["employee_id"]] >= 2:
            assert by_id[r["manager_id"]]["department_id"] == r["department_id"]


def test_large_org_keeps_the_shape_with_sensible_depth_and_span() -> None:
    rows = sample_org(10_000)
    assert len(rows) == 10_000
    assert len({r["employee_id"] for r in rows}) == 10_000
    assert len({r["email"] for r in rows}) == 10_000
    assert {r["department_id"] for r in rows} == {"CS", "IT", "FIN"}
    assert sum(1 for r in rows if not r["manager_id"]) == 1
    assert max(_depths(rows).values()) <= 7
    assert max(Counter(r["manager_id"] for r in rows if r["manager_id"]).values()) <= 12


def test_sample_org_is_deterministic_and_rejects_a_tiny_org() -> None:
    assert sample_org() == sample_org()
    assert sample_org(seed=1) != sample_org()
    with pytest.raises(InvalidInput, match="n_employees"):
        sample_org(3)


def test_org_csv_imports_into_perfcycle(tmp_path: Path, session: Session) -> None:
    rows = sample_org()
    path = write_org_csv(rows, tmp_path / "org.csv")
    assert path.read_text(encoding="utf-8").splitlines()[0] == ",".join(ORG_COLUMNS)
    report = import_org_csv(session, path, actor="test")
    assert report.created == 40
    assert session.scalars(select(Department.type).order_by(Department.id)).all() == [
        "external_service",
        "professional_support",
        "internal_service",
    ]
    gm = session.scalars(select(Employee).where(Employee.manager_id.is_(None))).one()
    assert gm.id == rows[0]["employee_id"] and gm.locale == "zh-CN"


# ---------------------------------------------------------------- tickets


def test_ticket_rows_are_deterministic_per_seed() -> None:
    org = sample_org()
    first = ticket_rows(org, START, END)
    assert first == ticket_rows(org, START, END)
    assert first != ticket_rows(org, START, END, seed=8)
    assert [t["id"] for t in first] == [f"T-{i:06d}" for i in range(1, len(first) + 1)]
    assert [t["opened_at"] for t in first] == sorted(t["opened_at"] for t in first)


def test_only_people_below_department_heads_work_tickets_more_in_customer_service() -> None:
    org = sample_org()
    tickets = _in_window(ticket_rows(org, START, END))
    depths = _depths(org)
    per_person = Counter(t["assignee"] for t in tickets)
    assert {e for e, d in depths.items() if d >= 2} == set(per_person)
    dept = {r["employee_id"]: r["department_id"] for r in org}
    assert all(t["queue"] == dept[t["assignee"]] for t in tickets)
    per_dept = Counter(dept[t["assignee"]] for t in tickets)
    assert per_dept["CS"] > per_dept["IT"] > per_dept["FIN"] > 0
    staff_load = [n for e, n in per_person.items() if dept[e] == "CS" and n > 40]
    assert len(staff_load) >= 10


def test_tickets_exist_outside_the_period_so_the_window_matters() -> None:
    tickets = ticket_rows(sample_org(), START, END)
    opened = [datetime.fromisoformat(t["opened_at"]) for t in tickets]
    assert min(opened).date() < START and max(opened).date() > END
    assert min(opened).date() >= START - timedelta(days=MARGIN_DAYS)


def _person_stats(tickets: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    stats: dict[str, dict[str, float]] = {}
    by_person: dict[str, list[dict[str, Any]]] = {}
    for t in tickets:
        by_person.setdefault(t["assignee"], []).append(t)
    for emp, own in by_person.items():
        answered = [t["satisfaction"] for t in own if t["satisfaction"] is not None]
        stats[emp] = {
            "tickets": len(own),
            "satisfaction_pct": 100 * sum(s >= 4 for s in answered) / len(answered)
            if answered
            else float("nan"),
            "complaint_rate_pct": 100 * sum(t["complaint"] for t in own) / len(own),
            "major_incidents": sum(t["major_incident"] for t in own),
        }
    return stats


@pytest.mark.parametrize(("start", "end"), [(START, END), (date(2026, 11, 1), date(2026, 11, 30))])
def test_storylines_for_calibration_are_in_every_period(start: date, end: date) -> None:
    org = sample_org()
    dept = {r["employee_id"]: r["department_id"] for r in org}
    lo, hi = (
        datetime.combine(start, datetime.min.time()),
        datetime.combine(end, datetime.min.time()),
    )
    tickets = [
        t
        for t in ticket_rows(org, start, end)
        if lo <= datetime.fromisoformat(t["opened_at"]) < hi + timedelta(days=1)
    ]
    stats = _person_stats(tickets)
    cs = {e: s for e, s in stats.items() if dept[e] == "CS"}
    # The external-service policy's cross-check: satisfaction >= 95 while complaints >= 3 per 100.
    assert any(s["satisfaction_pct"] >= 95 and s["complaint_rate_pct"] >= 5 for s in cs.values())
    assert sum(s["major_incidents"] for s in cs.values()) >= 1
    assert sum(s["major_incidents"] for e, s in stats.items() if dept[e] != "CS") >= 1
    satisfaction = [s["satisfaction_pct"] for s in cs.values() if s["tickets"] >= 10]
    assert min(satisfaction) < 75 and max(satisfaction) >= 95


def _sqlite_rows(url: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        return conn.execute(f"SELECT {', '.join(COLUMNS)} FROM tickets ORDER BY id").fetchall()


def test_generate_tickets_recreates_the_table_and_leaves_other_tables(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/tickets.db"
    org = sample_org()
    with sqlite3.connect(tmp_path / "tickets.db") as conn:
        conn.execute("CREATE TABLE other (x INTEGER)")
        conn.execute("INSERT INTO other VALUES (1)")
    n = generate_tickets(url, org, START, END)
    first = _sqlite_rows(url)
    assert len(first) == n > 1000
    assert generate_tickets(url, org, START, END) == n
    assert _sqlite_rows(url) == first
    expected = [tuple(t[c] for c in COLUMNS) for t in ticket_rows(org, START, END)]
    assert first == expected
    with sqlite3.connect(tmp_path / "tickets.db") as conn:
        assert conn.execute("SELECT x FROM other").fetchall() == [(1,)]


@pytest.mark.postgres
def test_generate_tickets_on_postgres_holds_the_same_rows(
    tmp_path: Path, pg_empty_url: str
) -> None:
    org = sample_org()
    sqlite_url = f"sqlite:///{tmp_path}/tickets.db"
    n = generate_tickets(sqlite_url, org, START, END)
    assert generate_tickets(pg_empty_url, org, START, END) == n
    engine = create_engine(pg_empty_url)
    try:
        with engine.connect() as conn:
            pg_rows = conn.execute(
                text(f"SELECT {', '.join(COLUMNS)} FROM tickets ORDER BY id")
            ).all()
            # Text order is time order on PostgreSQL too, whatever the database collation.
            inside = conn.scalar(
                text("SELECT count(*) FROM tickets WHERE opened_at >= :a AND opened_at < :b"),
                {"a": "2026-10-01", "b": "2027-01-01"},
            )
    finally:
        engine.dispose()
    assert [tuple(r) for r in pg_rows] == _sqlite_rows(sqlite_url)
    assert inside == len(_in_window(ticket_rows(org, START, END)))
