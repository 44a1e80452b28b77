"""insert_ignore and upsert: the bulk writes every stage relies on to be idempotent, on both
backends.

From 1,000 rows on PostgreSQL takes the COPY path; these tests hold it to the same contract as
the plain INSERT ... VALUES path on SQLite: the count of rows really inserted, existing rows
untouched, the first of repeated keys kept, defaults filled, JSON and UTC datetimes stored as
given.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any, cast

import pytest
from sqlalchemy import Table, case, event, select
from sqlalchemy.exc import StatementError

from perfcycle.core.db import COPY_MIN_ROWS, get_engine, insert_ignore, session_scope, upsert
from perfcycle.domain.models import Cycle, OutboxMessage

OUTBOX = cast(Table, OutboxMessage.__table__)
CYCLES = cast(Table, Cycle.__table__)
BEIJING = timezone(timedelta(hours=8))
T0 = datetime(2026, 10, 1, 9, 30, tzinfo=BEIJING)
ROWS = 3000
EXISTING = range(0, ROWS, 7)  # keys already in the table before the bulk insert
REPEATED = range(1, ROWS, 11)  # keys given a second time later in the same batch


def outbox_row(i: int, variant: str = "new") -> dict[str, Any]:
    """One mail; `state` and `attempts` are left out so their column defaults must apply."""
    return {
        "idempotency_key": f"-:person{i}:evaluation_assigned:1",
        "cycle_id": None,
        "recipient_id": f"E{i:05d}",
        "recipient_email": f"person{i}@example.com",
        "locale": "zh-CN" if i % 2 else "en",
        "template": "evaluation_assigned",
        "context": {
            "variant": variant,
            "count": i,
            "ratees": [{"employee_id": f"E{i + 1:05d}", "name": "王伟", "weight": 0.5}],
            "note": None,
        },
        "next_attempt_at": T0 + timedelta(minutes=i),
        "created_at": (T0 + timedelta(seconds=i)).astimezone(UTC),
    }


def batch() -> list[dict[str, Any]]:
    rows = [outbox_row(i) for i in range(ROWS)]
    rows += [outbox_row(i, variant="repeat") for i in REPEATED]
    return rows


def run_bulk_insert(url: str) -> int:
    with session_scope(url) as s:
        assert insert_ignore(s, OUTBOX, [outbox_row(i, "old") for i in EXISTING]) == len(EXISTING)
    with session_scope(url) as s:
        return insert_ignore(s, OUTBOX, batch())


def stored(url: str) -> dict[str, OutboxMessage]:
    with session_scope(url) as s:
        return {m.recipient_id or "": m for m in s.scalars(select(OutboxMessage))}


def check_bulk_insert(url: str) -> None:
    inserted = run_bulk_insert(url)

    assert inserted == ROWS - len(EXISTING)
    rows = stored(url)
    assert len(rows) == ROWS
    for i in range(ROWS):
        row = rows[f"E{i:05d}"]
        expected = outbox_row(i, "old" if i in EXISTING else "new")
        assert row.context == expected["context"], i
        assert row.next_attempt_at == expected["next_attempt_at"], i
        assert row.next_attempt_at is not None and row.next_attempt_at.tzinfo == UTC
        assert row.created_at == expected["created_at"]
        assert row.locale == expected["locale"]
        assert (row.state, row.attempts, row.claimed_by, row.sent_at) == ("pending", 0, None, None)
    # ids follow the order the rows were given in.
    new = sorted((r for r in rows.values() if r.context["variant"] == "new"), key=lambda r: r.id)
    assert [r.recipient_id for r in new] == [f"E{i:05d}" for i in range(ROWS) if i not in EXISTING]

    again = insert_ignore_again(url)
    assert again == 0
    assert len(stored(url)) == ROWS


def insert_ignore_again(url: str) -> int:
    with session_scope(url) as s:
        return insert_ignore(s, OUTBOX, batch())


def test_bulk_insert_on_sqlite(db_url: str) -> None:
    check_bulk_insert(db_url)


@pytest.mark.postgres
def test_bulk_insert_on_postgres(pg_url: str) -> None:
    check_bulk_insert(pg_url)


@pytest.mark.postgres
def test_postgres_bulk_insert_sends_no_insert_values(pg_url: str) -> None:
    """The speed of a 10,000-person launch rests on COPY: no per-row parameters at all."""
    statements: list[str] = []
    engine = get_engine(pg_url)
    event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    with session_scope(pg_url) as s:
        assert insert_ignore(s, OUTBOX, [outbox_row(i) for i in range(COPY_MIN_ROWS)]) == 1000
    assert not [q for q in statements if "INSERT INTO outbox" in q]
    assert len(stored(pg_url)) == COPY_MIN_ROWS


def cycle_row(i: int) -> dict[str, Any]:
    """`policy_snapshot` (default=dict, a callable) and `state` (default 'running') left out."""
    return {
        "policy": "external-service",
        "period": f"{2000 + i // 12}-{i % 12 + 1:02d}",
        "policy_digest": "0" * 64,
        "period_start": date(2026, 1, 1),
        "period_end": date(2026, 3, 31),
        "scope_key": "",
        "start_date": date(2026, 4, 1),
        "created_at": T0,
    }


@pytest.mark.postgres
def test_postgres_bulk_insert_applies_callable_defaults(pg_url: str) -> None:
    with session_scope(pg_url) as s:
        assert insert_ignore(s, CYCLES, [cycle_row(i) for i in range(1200)]) == 1200
        assert insert_ignore(s, CYCLES, [cycle_row(i) for i in range(1300)]) == 100
    with session_scope(pg_url) as s:
        cycles = s.scalars(select(Cycle)).all()
    assert len(cycles) == 1300
    assert {(c.state, repr(c.policy_snapshot), c.created_at) for c in cycles} == {
        ("running", "{}", T0)
    }


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_bad_row_writes_nothing(backend: str, request: pytest.FixtureRequest) -> None:
    """A naive datetime in row 2,500 fails the whole call and leaves no row behind."""
    url = request.getfixturevalue("db_url" if backend == "sqlite" else "pg_url")
    rows = [outbox_row(i) for i in range(ROWS)]
    rows[2500]["created_at"] = datetime(2026, 10, 1, 9, 30)
    with pytest.raises(StatementError, match="naive datetime"), session_scope(url) as s:
        insert_ignore(s, OUTBOX, rows)
    assert stored(url) == {}


# ---------------------------------------------------------------- upsert


def held_then_upserted(url: str, **how: Any) -> tuple[int, dict[str, OutboxMessage]]:
    """EXISTING rows held (one of them already sent), then all ROWS upserted as variant "new"."""
    with session_scope(url) as s:
        insert_ignore(s, OUTBOX, [outbox_row(i, "old") for i in EXISTING])
        s.execute(OUTBOX.update().where(OUTBOX.c.recipient_id == "E00007").values(state="sent"))
    with session_scope(url) as s:
        written = upsert(s, OUTBOX, [outbox_row(i) for i in range(ROWS)], **how)
    return written, stored(url)


def check_upsert_takes_named_columns(url: str) -> None:
    rows = [outbox_row(i) for i in range(ROWS)]
    for i in EXISTING:
        rows[i]["locale"] = "en-GB"  # a column the upsert does not name: the held one stays
    with session_scope(url) as s:
        insert_ignore(s, OUTBOX, [outbox_row(i, "old") for i in EXISTING])
        held_ids = {r.recipient_id or "": r.id for r in s.scalars(select(OutboxMessage))}
    with session_scope(url) as s:
        written = upsert(s, OUTBOX, rows, key=("idempotency_key",), update=("context",))
    assert written == ROWS
    found = stored(url)
    assert len(found) == ROWS
    for i in range(ROWS):
        row = found[f"E{i:05d}"]
        assert row.context["variant"] == "new", i
        assert row.locale == outbox_row(i)["locale"], i
        assert row.next_attempt_at == outbox_row(i)["next_attempt_at"], i
        assert (row.state, row.attempts) == ("pending", 0)
    # Held rows are updated in place, not replaced.
    assert {r: found[r].id for r in held_ids} == held_ids
    with session_scope(url) as s:
        again = upsert(s, OUTBOX, rows, key=("idempotency_key",), update=("context",))
    assert again == ROWS and len(stored(url)) == ROWS


def check_upsert_sets_expressions_of_both_rows(url: str) -> None:
    """The function form reads the new row (`new`) and the held one (OUTBOX.c): here a sent
    mail keeps its context, every other held row takes the new one and counts an attempt."""
    written, found = held_then_upserted(
        url,
        key=("idempotency_key",),
        update=lambda new: {
            "context": case((OUTBOX.c.state == "sent", OUTBOX.c.context), else_=new.context),
            "attempts": OUTBOX.c.attempts + 1,
        },
    )
    assert written == ROWS
    for i in range(ROWS):
        row = found[f"E{i:05d}"]
        expected = "old" if i == 7 else "new"
        assert row.context["variant"] == expected, i
        assert row.attempts == (1 if i in EXISTING else 0), i


def test_upsert_on_sqlite(db_url: str) -> None:
    check_upsert_takes_named_columns(db_url)


@pytest.mark.postgres
def test_upsert_on_postgres(pg_url: str) -> None:
    check_upsert_takes_named_columns(pg_url)


@pytest.mark.postgres
def test_postgres_upsert_of_named_columns_sends_no_insert_values(pg_url: str) -> None:
    """Metric values of a 10,000-person cycle are upserted: COPY, as for insert_ignore."""
    statements: list[str] = []
    engine = get_engine(pg_url)
    event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    rows = [outbox_row(i) for i in range(COPY_MIN_ROWS)]
    with session_scope(pg_url) as s:
        assert upsert(s, OUTBOX, rows, key=("idempotency_key",), update=("context",)) == 1000
    assert not [q for q in statements if "INSERT INTO outbox" in q]
    changed = [outbox_row(i, "changed") for i in range(COPY_MIN_ROWS)]
    with session_scope(pg_url) as s:
        assert upsert(s, OUTBOX, changed, key=("idempotency_key",), update=("context",)) == 1000
    assert {m.context["variant"] for m in stored(pg_url).values()} == {"changed"}
    assert len(stored(pg_url)) == COPY_MIN_ROWS


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_upsert_sets_expressions_of_both_rows(backend: str, request: pytest.FixtureRequest) -> None:
    check_upsert_sets_expressions_of_both_rows(
        request.getfixturevalue("db_url" if backend == "sqlite" else "pg_url")
    )


def test_upsert_of_nothing_writes_nothing(db_url: str) -> None:
    with session_scope(db_url) as s:
        assert upsert(s, OUTBOX, [], key=("idempotency_key",), update=("context",)) == 0
    assert stored(db_url) == {}
