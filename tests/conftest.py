"""Shared fixtures: a migrated SQLite file per test, and a migrated PostgreSQL database when asked.

The migrations run once per session (a template) and each test gets its own copy, so a test may
write freely; tests/core/test_migrations.py migrates empty databases itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from perfcycle.core.db import session_scope
from perfcycle.core.settings import get_settings
from tests.support import databases
from tests.support.cycle import DemoOrg, prepare_demo_org


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite file migrated to head once per session; copy it, never write to it."""
    return databases.migrated_sqlite(tmp_path_factory.mktemp("template") / "perfcycle.db")


@pytest.fixture(scope="session")
def demo_org_built(tmp_path_factory: pytest.TempPathFactory, sqlite_template: str) -> DemoOrg:
    """The demo organisation imported once per session; tests take a copy with
    databases.copy_demo_org(demo_org_built, db_url, tmp_path)."""
    folder = tmp_path_factory.mktemp("demo-org")
    url = databases.copy_sqlite(sqlite_template, folder / "perfcycle.db")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PERFCYCLE_HOME", str(folder))
        get_settings.cache_clear()
        org = prepare_demo_org(url, folder)
    get_settings.cache_clear()
    return org


@pytest.fixture(scope="session")
def started_cycle(
    tmp_path_factory: pytest.TempPathFactory, demo_org_built: DemoOrg
) -> databases.StartedCycle:
    """An external-service 2026-Q4 cycle on the demo organisation, launched on 4 Jan 2027 at
    09:00 UTC and waiting at target setting (what tests/web/test_portal_pages.start_cycle
    makes); tests take a copy with databases.use_started."""
    folder = tmp_path_factory.mktemp("started-cycle")
    policy, period, at = "external-service", "2026-Q4", datetime(2027, 1, 4, 9, 0, tzinfo=UTC)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PERFCYCLE_HOME", str(folder))
        env.delenv("PERFCYCLE_POLICIES_DIR", raising=False)
        url = databases.sqlite_url(folder / "perfcycle.db")
        org = databases.copy_demo_org(demo_org_built, url, folder)
        cycle_id = databases.start_demo_cycle(url, org, env, policy, period, at)
    get_settings.cache_clear()
    return databases.StartedCycle(url, org, cycle_id, policy, period, at)


@pytest.fixture
def db_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sqlite_template: str) -> str:
    monkeypatch.setenv("PERFCYCLE_HOME", str(tmp_path))
    return databases.copy_sqlite(sqlite_template, tmp_path / "perfcycle.db")


@pytest.fixture
def session(db_url: str) -> Iterator[Session]:
    with session_scope(db_url) as s:
        yield s


@pytest.fixture
def pg_empty_url() -> Iterator[str]:
    """A new, empty PostgreSQL database for one test, dropped afterwards."""
    databases.require_pg()
    with databases.pg_database() as url:
        yield url


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """The name of a PostgreSQL database migrated to head once per session, dropped at the end."""
    databases.require_pg()
    name = databases.migrated_pg_template()
    yield name
    databases.drop_pg_database(name)


@pytest.fixture
def pg_url(pg_template: str) -> Iterator[str]:
    """A fresh PostgreSQL database with the schema from the migrations."""
    with databases.pg_database(template=pg_template) as url:
        yield url


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests that drive a real Prefect server share one xdist worker (they start servers and
    flow-run processes of their own) and start first: they wait on processes more than they
    compute, so the other worker runs the rest of the suite beside them."""
    prefect = [item for item in items if item.get_closest_marker("prefect")]
    for item in prefect:
        item.add_marker(pytest.mark.xdist_group("prefect"))
    items[:] = prefect + [item for item in items if not item.get_closest_marker("prefect")]
