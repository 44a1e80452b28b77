"""Engine, sessions and the few SQL helpers every module shares."""

from __future__ import annotations

import operator
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Engine, Table, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.base import ReadOnlyColumnCollection
from sqlalchemy.sql.schema import ScalarElementColumnDefault
from sqlalchemy.types import DateTime, TypeDecorator

from perfcycle.core.settings import get_settings


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite drops tzinfo otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass an aware UTC datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(
        # SQLAlchemy's TypeDecorator hook: stored values come back the same way on every dialect.
        self, value: datetime | None, dialect: Any  # noqa: ARG002
    ) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "isolation_level": None})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA busy_timeout=30000")
            _use_wal(cur)
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        # Writers from the portal, the flows and the CLI share one file: take the write lock at
        # BEGIN so a read-then-write (the audit chain's tail, a claim) can never be overtaken.
        @event.listens_for(engine, "begin")
        def _begin_immediate(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return create_engine(url, pool_pre_ping=True)


WAL_SWITCH_WAIT_S = 30.0


def _use_wal(cur: Any) -> None:
    """Switch the file to WAL (persistent; a no-op once done). The switch needs the file to
    itself, and SQLite answers "database is locked" at once rather than waiting in its busy
    handler while another process (a concurrent `perfcycle` start) is in a transaction: retry."""
    deadline = time.monotonic() + WAL_SWITCH_WAIT_S
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@lru_cache(maxsize=8)
def get_engine(url: str | None = None) -> Engine:
    return make_engine(url or get_settings().effective_database_url)


@lru_cache(maxsize=8)
def _sessionmaker(url: str) -> sessionmaker[Session]:
    return sessionmaker(get_engine(url), expire_on_commit=False)


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error."""
    # Keyed by the resolved URL, so a changed PERFCYCLE_DATABASE_URL (after
    # get_settings.cache_clear()) is honoured.
    session = _sessionmaker(url or get_settings().effective_database_url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


# From this many rows on, PostgreSQL gets COPY into a staging table and one INSERT ... SELECT:
# multi-row VALUES spends more time compiling and binding parameters than the server spends
# inserting (60,000 rater assignments on 2 cores: 7.2 s with VALUES, 2.8 s with COPY, most of
# which is the server's index and foreign-key work).
COPY_MIN_ROWS = 1000
_VALUES_BATCH = 5000
_POSITION = "insert_ignore_position"


def insert_ignore(session: Session, table: Table, rows: Sequence[dict[str, Any]]) -> int:
    """Bulk INSERT that skips rows a unique constraint already holds; returns rows inserted.

    This is how every stage stays idempotent: re-running it re-inserts the same natural keys and
    the database drops the duplicates. Every row must have the keys of the first; columns left
    out get their default. Of rows repeating a key within one call, the first is kept.
    """
    if not rows:
        return 0
    if _copies(session, rows):
        copied = _copy_insert(session, table, rows, "ON CONFLICT DO NOTHING")
        if copied is not None:
            return copied
    return _values_insert_ignore(session, table, rows)


def _copies(session: Session, rows: Sequence[dict[str, Any]]) -> bool:
    dialect = session.get_bind().dialect
    return (
        dialect.name == "postgresql" and dialect.driver == "psycopg" and len(rows) >= COPY_MIN_ROWS
    )


def upsert(
    session: Session,
    table: Table,
    rows: Sequence[dict[str, Any]],
    *,
    key: Sequence[str],
    update: Sequence[str] | Callable[[ReadOnlyColumnCollection[str, Any]], Mapping[str, Any]],
) -> int:
    """Bulk INSERT in which a row whose `key` (the columns of a unique constraint) the table
    already holds updates the held row instead; returns the rows inserted or updated.

    `update` names the columns the held row takes from the new one, or is a function of the new
    row's columns (`excluded`) giving each column to set an expression, which may also read the
    held row through `table.c` (keep a grade the committee decided, say). Rows must not repeat a
    key within one call: PostgreSQL refuses to update one row twice in a statement.
    """
    if not rows:
        return 0
    if not callable(update) and _copies(session, rows):
        quote = session.get_bind().dialect.identifier_preparer.quote
        on_conflict = (
            f"ON CONFLICT ({', '.join(quote(k) for k in key)}) DO UPDATE SET "
            + ", ".join(f"{quote(c)} = EXCLUDED.{quote(c)}" for c in update)
        )
        copied = _copy_insert(session, table, rows, on_conflict)
        if copied is not None:
            return copied
    stmt = _dialect_insert(session, table)
    new = stmt.excluded
    changes = {c: new[c] for c in update} if not callable(update) else dict(update(new))
    return _insert_returning(
        session,
        table,
        stmt.on_conflict_do_update(index_elements=[table.c[k] for k in key], set_=changes),
        rows,
    )


def _values_insert_ignore(session: Session, table: Table, rows: Sequence[dict[str, Any]]) -> int:
    stmt = _dialect_insert(session, table).on_conflict_do_nothing()
    return _insert_returning(session, table, stmt, rows)


def _dialect_insert(session: Session, table: Table) -> Any:
    """INSERT with the backend's ON CONFLICT clauses (the two supported backends spell them
    alike, but SQLAlchemy keeps them in each dialect)."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise RuntimeError(f"unsupported database dialect {dialect}")  # pragma: no cover


def _insert_returning(
    session: Session, table: Table, stmt: Any, rows: Sequence[dict[str, Any]]
) -> int:
    # RETURNING counts what was really written: executemany's rowcount is unreliable on psycopg.
    stmt = stmt.returning(*table.primary_key.columns)
    written = 0
    for start in range(0, len(rows), _VALUES_BATCH):
        result = session.execute(stmt, list(rows[start : start + _VALUES_BATCH]))
        written += len(result.all())
    return written


def _copy_insert(
    session: Session, table: Table, rows: Sequence[dict[str, Any]], on_conflict: str
) -> int | None:
    """COPY the rows into a temporary table, then INSERT ... SELECT ... `on_conflict` (DO NOTHING
    for insert_ignore, DO UPDATE for upsert); returns the rows inserted or updated.

    Values go through each column type's bind processor, exactly as with INSERT ... VALUES
    (UTCDateTime's checks and UTC conversion, JSON wrapping). Returns None, having written
    nothing, when the rows need what only SQLAlchemy's INSERT does (a callable column default)
    or are wrong (an unknown or missing key, a bad value): the VALUES path then does it, or
    raises its usual error.
    """
    dialect = session.get_bind().dialect
    columns = _copy_columns(table, rows[0])
    if columns is None:
        return None
    records = _copy_records(dialect, columns, rows)
    if records is None:
        return None
    if session.autoflush:
        # session.execute would flush pending objects first (a cycle the rows refer to, say).
        session.flush()
    quote = dialect.identifier_preparer.quote
    staging = quote(f"insert_ignore_{uuid.uuid4().hex[:16]}")
    target = dialect.identifier_preparer.format_table(table)
    names = ", ".join(quote(c.name) for c, _ in columns)
    driver_connection: Any = session.connection().connection.driver_connection
    with driver_connection.cursor() as cursor:
        cursor.execute(
            f"CREATE TEMPORARY TABLE {staging} ON COMMIT DROP AS "
            f"SELECT 0::bigint AS {_POSITION}, {names} FROM {target} WITH NO DATA"
        )
        with cursor.copy(f"COPY {staging} ({_POSITION}, {names}) FROM STDIN") as copy:
            for position, record in enumerate(records):
                copy.write_row((position, *record))
        # ORDER BY keeps the callers' order: ids ascend as with VALUES, and the first of two
        # rows with the same key is the one kept.
        cursor.execute(
            f"INSERT INTO {target} ({names}) SELECT {names} FROM {staging} "
            f"ORDER BY {_POSITION} {on_conflict}"
        )
        inserted = int(cursor.rowcount)
        cursor.execute(f"DROP TABLE {staging}")
    return max(inserted, 0)


_Column = tuple[Column[Any], Any]  # (column, the key in the rows or _Default(value))


@dataclass(frozen=True)
class _Default:
    value: Any


def _copy_columns(table: Table, first: dict[str, Any]) -> list[_Column] | None:
    """The columns to copy: the first row's keys, plus scalar defaults of the ones left out."""
    if any(key not in table.c for key in first):
        return None
    columns: list[_Column] = []
    for column in table.columns:
        if column.key in first:
            columns.append((column, column.key))
            continue
        default = column.default
        if default is None:
            continue  # NULL, or the server's default (a serial id)
        if not isinstance(default, ScalarElementColumnDefault):
            return None
        columns.append((column, _Default(default.arg)))
    return columns


def _copy_records(
    dialect: Dialect, columns: list[_Column], rows: Sequence[dict[str, Any]]
) -> list[tuple[Any, ...]] | None:
    try:
        getters = [_value_getter(dialect, column, source) for column, source in columns]
        return [tuple(get(row) for get in getters) for row in rows]
    except (KeyError, ValueError, TypeError):
        # A missing key or a bad value (a naive datetime): the VALUES path raises SQLAlchemy's
        # usual error, naming the parameter and the row.
        return None


def _value_getter(dialect: Dialect, column: Column[Any], source: Any) -> Any:
    process = column.type.dialect_impl(dialect).bind_processor(dialect)
    if isinstance(source, _Default):
        value = process(source.value) if process else source.value
        return lambda _row: value
    if process is None:
        return operator.itemgetter(source)
    return lambda row: process(row[source])
