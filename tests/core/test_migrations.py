"""Alembic migrations on SQLite and PostgreSQL: in sync with the models, repeatable, reversible,
all-or-nothing, and audit_events append-only at the database level."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import inspect, select, text
from sqlalchemy.exc import DBAPIError

from perfcycle.core import migrate
from perfcycle.core.db import get_engine, make_engine, session_scope
from perfcycle.core.errors import InvalidInput
from perfcycle.domain import audit
from perfcycle.domain.models import AuditEvent, Base, Cycle, Department, Employee

REPO_ROOT = Path(__file__).resolve().parents[2]
APPEND_ONLY = "audit_events is append-only"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database with nothing in it, on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/perfcycle.db"
    url: str = request.getfixturevalue("pg_empty_url")
    return url


def table_names(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def execute(url: str, sql: str) -> None:
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text(sql))
    finally:
        engine.dispose()


def record_one_event(url: str) -> tuple[int, str, str]:
    with session_scope(url) as s:
        audit.record(s, actor="hr.admin", action="cycle.launch", subject="cycle:1")
    with session_scope(url) as s:
        event = s.scalars(select(AuditEvent).order_by(AuditEvent.id.desc()).limit(1)).one()
        return event.id, event.actor, event.hash


def test_upgrade_builds_the_schema_the_models_describe(empty_url: str) -> None:
    migrate.upgrade(empty_url)

    assert migrate.current(empty_url) == migrate.head()
    # Fails when someone changes perfcycle/domain/models.py without adding a revision.
    assert migrate.check(empty_url) == []
    assert set(Base.metadata.tables) <= table_names(empty_url)


def test_check_names_what_drifted(empty_url: str) -> None:
    migrate.upgrade(empty_url)
    execute(empty_url, "DROP INDEX ix_outbox_state_next")

    assert migrate.check(empty_url) == [
        "add_index ix_outbox_state_next on outbox(state, next_attempt_at)"
    ]


def test_check_reports_a_database_that_was_never_migrated(empty_url: str) -> None:
    differences = migrate.check(empty_url)

    assert differences[0] == (
        f"database is at revision none (never migrated), the migrations' head is {migrate.head()}"
    )
    assert "add_table audit_events" in differences


def test_upgrade_twice_is_a_noop_and_keeps_data(empty_url: str) -> None:
    migrate.upgrade(empty_url)
    with session_scope(empty_url) as s:
        s.add(Department(id="D1", name="客服中心", type="external_service"))
    event_id, _, event_hash = record_one_event(empty_url)

    migrate.upgrade(empty_url)

    assert migrate.current(empty_url) == migrate.head()
    assert migrate.check(empty_url) == []
    with session_scope(empty_url) as s:
        assert s.scalar(select(Department.name)) == "客服中心"
        assert s.scalar(select(AuditEvent.hash).where(AuditEvent.id == event_id)) == event_hash


def test_downgrade_to_base_and_up_again(empty_url: str) -> None:
    migrate.upgrade(empty_url)

    migrate.downgrade(empty_url, "base")

    assert migrate.current(empty_url) is None
    assert table_names(empty_url) <= {"alembic_version"}

    migrate.upgrade(empty_url)

    assert migrate.current(empty_url) == migrate.head()
    assert migrate.check(empty_url) == []


@pytest.mark.parametrize(
    "statement", ["UPDATE audit_events SET actor = 'mallory'", "DELETE FROM audit_events"]
)
def test_audit_events_refuse_update_and_delete(empty_url: str, statement: str) -> None:
    migrate.upgrade(empty_url)
    event_id, actor, event_hash = record_one_event(empty_url)

    with pytest.raises(DBAPIError, match=APPEND_ONLY):
        execute(empty_url, statement)

    with session_scope(empty_url) as s:
        row = s.get(AuditEvent, event_id)
        assert row is not None
        assert (row.actor, row.hash) == (actor, event_hash)
        assert audit.verify(s).ok


@pytest.mark.postgres
def test_audit_events_refuse_truncate_on_postgresql(pg_empty_url: str) -> None:
    migrate.upgrade(pg_empty_url)
    record_one_event(pg_empty_url)

    with pytest.raises(DBAPIError, match=APPEND_ONLY):
        execute(pg_empty_url, "TRUNCATE audit_events")

    with session_scope(pg_empty_url) as s:
        assert audit.verify(s).checked == 1


def test_downgrade_removes_the_append_only_triggers(empty_url: str) -> None:
    migrate.upgrade(empty_url)
    record_one_event(empty_url)

    migrate.downgrade(empty_url, "0001")

    execute(empty_url, "UPDATE audit_events SET actor = 'repaired'")
    differences = migrate.check(empty_url)
    assert differences[0].startswith("database is at revision 0001")
    assert any("audit_events_no_" in d and "missing" in d for d in differences[1:])


# Objects in the way of revision 0002, so the upgrade fails after 0001 has created every table.
BLOCKERS = {
    "sqlite": [
        "CREATE TABLE blocker (id INTEGER)",
        "CREATE TRIGGER audit_events_no_update AFTER INSERT ON blocker BEGIN SELECT 1; END",
    ],
    "postgresql": [
        "CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql "
        "AS $$ BEGIN RETURN NULL; END $$"
    ],
}


def test_failed_upgrade_leaves_the_database_as_it_was(empty_url: str) -> None:
    # The whole upgrade is one transaction (on SQLite: perfcycle.core.db's BEGIN IMMEDIATE), so the
    # tables of revision 0001 roll back with the failure in 0002.
    backend = "sqlite" if empty_url.startswith("sqlite") else "postgresql"
    for sql in BLOCKERS[backend]:
        execute(empty_url, sql)
    tables_before = table_names(empty_url)

    with pytest.raises(DBAPIError, match="audit_events_"):
        migrate.upgrade(empty_url)

    assert table_names(empty_url) == tables_before
    assert migrate.current(empty_url) is None


def test_unknown_revision_is_refused_and_changes_nothing(empty_url: str) -> None:
    with pytest.raises(InvalidInput) as err:
        migrate.upgrade(empty_url, "9999")

    assert err.value.problems[0].field == "revision"
    assert "9999" in err.value.problems[0].message
    assert table_names(empty_url) == set()


def test_schema_made_without_migrations_is_refused(empty_url: str) -> None:
    url = empty_url
    Base.metadata.create_all(get_engine(url))
    tables_before = table_names(url)

    with pytest.raises(InvalidInput, match="no migration revision") as err:
        migrate.upgrade(url)

    assert err.value.problems[0].field == "database_url"
    assert "appeals" in err.value.problems[0].message
    assert table_names(url) == tables_before
    assert migrate.current(url) is None


def test_unsupported_database_url_is_refused() -> None:
    with pytest.raises(InvalidInput, match="database_url: unsupported database 'mysql'"):
        migrate.upgrade("mysql://localhost/perfcycle")


def test_new_revision_refuses_when_models_match_the_migrations() -> None:
    before = sorted(migrate.VERSIONS_DIR.glob("*.py"))
    try:
        with pytest.raises(InvalidInput, match="nothing to generate"):
            migrate.new_revision("no change")
    finally:
        # Models mid-edit make this fail by writing a real revision: leave the tree as it was.
        for written in set(migrate.VERSIONS_DIR.glob("*.py")) - set(before):
            written.unlink()

    assert sorted(migrate.VERSIONS_DIR.glob("*.py")) == before


def test_processes_upgrading_at_once_both_succeed(empty_url: str, tmp_path: Path) -> None:
    # `perfcycle up` starts several processes that each migrate on start; from another working
    # directory, to show nothing depends on the repo being the cwd.
    code = "import sys; from perfcycle.core.migrate import upgrade; upgrade(sys.argv[1])"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, empty_url],
            cwd=tmp_path,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    errors = [p.communicate(timeout=60)[1] for p in procs]

    assert [p.returncode for p in procs] == [0, 0], errors
    assert migrate.check(empty_url) == []


BATCH_REVISION = """
import sqlalchemy as sa
from alembic import op

revision = "9001"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Recreates employees, which departments' children and employees itself reference.
    with op.batch_alter_table("employees", recreate="always") as batch_op:
        batch_op.alter_column("name", type_=sa.String(300))
    {extra}


def downgrade() -> None:
    pass
"""


def upgrade_with_extra_revision(url: str, scripts: Path, extra: str = "") -> None:
    shutil.copytree(migrate.MIGRATIONS_DIR, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    source = BATCH_REVISION.format(head=migrate.head(), extra=extra)
    (scripts / "versions" / "9001_batch.py").write_text(source)
    config = migrate.alembic_config(url)
    config.set_main_option("script_location", str(scripts))
    command.upgrade(config, "heads")


def seed_manager_and_report(url: str) -> None:
    with session_scope(url) as s:
        s.add(Department(id="D1", name="IT", type="internal_service"))
        s.flush()
        s.add(Employee(id="E1", name="Boss", email="b@x", department_id="D1"))
        s.flush()
        s.add(Employee(id="E2", name="Report", email="r@x", department_id="D1", manager_id="E1"))


def test_sqlite_batch_migration_of_a_referenced_table_keeps_its_rows(tmp_path: Path) -> None:
    # SQLite cannot ALTER a column: batch mode copies the table and drops the old one, which
    # enforced foreign keys would refuse while other rows reference it.
    url = f"sqlite:///{tmp_path}/perfcycle.db"
    migrate.upgrade(url)
    seed_manager_and_report(url)

    upgrade_with_extra_revision(url, tmp_path / "scripts")

    assert migrate.current(url) == "9001"
    with session_scope(url) as s:
        assert s.scalar(select(Employee.manager_id).where(Employee.id == "E2")) == "E1"


def test_sqlite_migration_that_breaks_a_foreign_key_is_rolled_back(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/perfcycle.db"
    migrate.upgrade(url)
    seed_manager_and_report(url)

    with pytest.raises(RuntimeError, match="foreign keys pointing nowhere"):
        upgrade_with_extra_revision(
            url, tmp_path / "scripts", extra="op.execute(\"DELETE FROM employees WHERE id = 'E1'\")"
        )

    assert migrate.current(url) == migrate.head()
    with session_scope(url) as s:
        assert s.scalars(select(Employee.id).order_by(Employee.id)).all() == ["E1", "E2"]


def test_cycles_launched_before_snapshot_versions_read_as_version_1(empty_url: str) -> None:
    migrate.upgrade(empty_url, "0007")
    execute(
        empty_url,
        "INSERT INTO cycles (policy, policy_digest, policy_snapshot, period, period_start, "
        "period_end, scope_key, start_date, state, created_at) VALUES ('external-service', '-', "
        "'{}', '2026-Q4', '2026-10-01', '2026-12-31', '', '2026-10-01', 'running', "
        "'2026-10-01 00:00:00+00:00')",
    )

    migrate.upgrade(empty_url)

    assert migrate.check(empty_url) == []
    with session_scope(empty_url) as s:
        assert s.scalars(select(Cycle.snapshot_version)).all() == [1]
    migrate.downgrade(empty_url, "0007")
    engine = make_engine(empty_url)
    try:
        assert "snapshot_version" not in {c["name"] for c in inspect(engine).get_columns("cycles")}
    finally:
        engine.dispose()
