"""Migrated databases for tests without running Alembic per test.

The schema is built once per pytest session by the real migrations (a SQLite file, a PostgreSQL
template database); each test gets a byte copy (SQLite) or a `CREATE DATABASE ... TEMPLATE`
clone (PostgreSQL). tests/core/test_migrations.py still migrates empty databases itself.

The same copying serves fixtures that build an expensive state once per module (finished demo
cycles) and hand each test its own copy to write to.
"""

from __future__ import annotations

import copy
import os
import shutil
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from perfcycle.core import db, migrate
from perfcycle.core.db import get_engine
from perfcycle.core.settings import get_settings
from tests.support.cycle import DemoOrg, launch, run_until_wait

PG_ADMIN_DSN = os.environ.get(
    "PERFCYCLE_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
# Names are random: pytest runs started at the same time never share (or drop) each other's.
PG_PREFIX = "perfcycle_t_"


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def sqlite_path(url: str) -> Path:
    return Path(url.split("///", 1)[1])


def migrated_sqlite(path: Path) -> str:
    """Run every migration on a new SQLite file at `path`; returns its URL."""
    url = sqlite_url(path)
    migrate.upgrade(url)
    return url


def copy_sqlite(source_url: str, target: Path) -> str:
    """Copy the SQLite database at `source_url` to `target` (a file path); returns its URL.

    Everything still in the write-ahead log is folded into the main file first, so the one file
    copied holds all committed data (idle pooled connections hold no transaction and may stay).
    """
    source = sqlite_path(source_url)
    conn = sqlite3.connect(source, timeout=30)
    try:
        busy, _log, _done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        conn.close()
    # Busy means a connection is still inside a transaction: the copy could miss its writes.
    assert busy == 0, f"{source} is in use; finish its transactions before copying it"
    target.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("-wal", "-shm"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(source, target)
    return sqlite_url(target)


def copy_demo_org(built: DemoOrg, url: str, folder: Path) -> DemoOrg:
    """The demo organisation `built` once (SQLite), copied to the SQLite `url`, its ticket system
    and org CSV copied into `folder`: what prepare_demo_org(url, folder) makes, without the
    import. The caller points PERFCYCLE_TICKETS_URL at the copy's tickets_url."""
    copy_sqlite(built.url, sqlite_path(url))
    tickets = copy_sqlite(built.tickets_url, folder / sqlite_path(built.tickets_url).name)
    org_csv = folder / built.org_csv.name
    shutil.copyfile(built.org_csv, org_csv)
    return DemoOrg(url, tickets, org_csv, copy.deepcopy(built.rows))


# ---------------------------------------------------------------- PostgreSQL


def pg_available() -> bool:
    try:
        with psycopg.connect(PG_ADMIN_DSN, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


def require_pg() -> None:
    """Skip the test (fail it in CI) when PostgreSQL is not reachable."""
    if not pg_available():
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI and not reachable at {PG_ADMIN_DSN}")
        pytest.skip("PostgreSQL not reachable")


def create_pg_database(template: str | None = None, name: str | None = None) -> str:
    """A new PostgreSQL database (a clone of `template` when given); returns its name."""
    name = name or f"{PG_PREFIX}{uuid.uuid4().hex[:10]}"
    clause = f' TEMPLATE "{template}"' if template else ""
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"{clause}')
    return name


def pg_name(url: str) -> str:
    """The database name in a PostgreSQL URL."""
    name = make_url(url).database
    assert name, url
    return name


def release_pg(url: str) -> None:
    """Close this process's pooled connections to `url`, so it can serve as a template."""
    # get_engine's cache may have evicted the engine its sessionmaker still holds: close both.
    for engine in {get_engine(url), db._sessionmaker(url).kw["bind"]}:
        engine.dispose()
    get_engine.cache_clear()
    db._sessionmaker.cache_clear()


def replace_pg_database(url: str, template: str) -> None:
    """Make the database at `url` a fresh clone of `template`, under the same name."""
    name = pg_name(url)
    drop_pg_database(name)
    create_pg_database(template, name)


def drop_pg_database(name: str) -> None:
    release_pg(PG_URL.format(name=name))
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def pg_database(template: str | None = None) -> Iterator[str]:
    """A new PostgreSQL database's URL for the length of the block, dropped afterwards."""
    name = create_pg_database(template)
    try:
        yield PG_URL.format(name=name)
    finally:
        drop_pg_database(name)


def migrated_pg_template() -> str:
    """A new database migrated to head, to be cloned; returns its name.

    migrate.upgrade disposes its private engine, so no session is left connected to the template
    (CREATE DATABASE ... TEMPLATE refuses a template that anyone is connected to).
    """
    name = create_pg_database()
    migrate.upgrade(PG_URL.format(name=name))
    return name


# ---------------------------------------------------------------- a started demo cycle


@dataclass(frozen=True)
class StartedCycle:
    """A cycle of `policy` for `period` launched on the demo organisation with the clock at `at`
    and run until it waits at its first stage: built once, copied into each test."""

    url: str
    org: DemoOrg
    cycle_id: int
    policy: str
    period: str
    at: datetime


def start_demo_cycle(
    url: str,
    org: DemoOrg,
    monkeypatch: pytest.MonkeyPatch,
    policy: str,
    period: str,
    at: datetime,
) -> int:
    """Launch `policy` on the demo organisation in `url` at `at` (the clock stays frozen there)
    and run it until it waits at target setting; returns the cycle's id."""
    monkeypatch.setenv("PERFCYCLE_TICKETS_URL", org.tickets_url)
    monkeypatch.setenv("PERFCYCLE_NOW", at.isoformat())
    get_settings.cache_clear()
    cycle_id = launch(url, policy, period)
    assert run_until_wait(url, cycle_id).stage == "target_setting"
    return cycle_id


def use_started(
    started: StartedCycle, url: str, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> int:
    """Make the SQLite `url` a copy of `started` (its tickets copied into `folder`), with the
    environment start_demo_cycle leaves; returns the cycle's id."""
    copy_sqlite(started.url, sqlite_path(url))
    tickets = copy_sqlite(started.org.tickets_url, folder / "tickets.db")
    monkeypatch.setenv("PERFCYCLE_TICKETS_URL", tickets)
    monkeypatch.setenv("PERFCYCLE_NOW", started.at.isoformat())
    get_settings.cache_clear()
    return started.cycle_id
