"""Database migrations (Alembic), configured in code: no alembic.ini, any working directory.

After changing perfcycle/domain/models.py, add a revision with this one command, then read the
file it prints (perfcycle/core/migrations/versions/NNNN_<message>.py) and run
tests/core/test_migrations.py:

    .venv/bin/python -c "from perfcycle.core.migrate import new_revision as n; print(n('msg'))"

A hand-written revision (data fix, trigger): new_revision('msg', empty=True).

Alembic keeps its environment in a module-level global: run one migration at a time per process.
Separate processes may upgrade the same database at once; they are serialised (SQLite: BEGIN
IMMEDIATE, PostgreSQL: an advisory lock) and the later one finds nothing to do.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Column, Connection, Index, Table, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.schema import ColumnCollectionConstraint
from sqlalchemy.types import TypeDecorator

from perfcycle.core.db import make_engine
from perfcycle.core.errors import InvalidInput, Problem
from perfcycle.core.settings import get_settings
from perfcycle.domain.models import Base

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
VERSIONS_DIR = MIGRATIONS_DIR / "versions"
SUPPORTED_BACKENDS = ("sqlite", "postgresql")

# Created by revision 0002; check() reports any that is missing or disabled.
AUDIT_TRIGGERS = {
    "sqlite": ("audit_events_no_update", "audit_events_no_delete"),
    "postgresql": ("audit_events_no_update_delete", "audit_events_no_truncate"),
}


def upgrade(url: str | None = None, revision: str = "head") -> None:
    """Migrate the database up to `revision`; a no-op when it is already there."""
    url = _resolve_url(url)
    _refuse_unversioned_schema(url)
    _run_command(command.upgrade, url, revision)


def downgrade(url: str | None, revision: str) -> None:
    """Migrate the database down to `revision` ("base" removes every table)."""
    _run_command(command.downgrade, _resolve_url(url), revision)


def current(url: str | None = None) -> str | None:
    """The database's revision, None when it has never been migrated."""
    with _connect(_resolve_url(url)) as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head() -> str | None:
    """The newest revision shipped in perfcycle/core/migrations/versions."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def check(url: str | None = None) -> list[str]:
    """What differs between the models and the database; an empty list means in sync."""
    with _connect(_resolve_url(url)) as conn:
        context = MigrationContext.configure(conn, opts=context_options(conn.dialect.name))
        differences = _revision_difference(context)
        differences += [_describe(diff) for diff in compare_metadata(context, Base.metadata)]
        differences += _audit_trigger_difference(conn)
        return differences


def new_revision(message: str, *, empty: bool = False, url: str | None = None) -> Path:
    """Write the next revision file from the models' changes and return its path.

    The changes are found by comparing the models with `url`, by default a scratch SQLite file
    migrated to head. With empty=True the file has empty upgrade/downgrade bodies to fill in.
    """
    if not message.strip():
        raise InvalidInput([Problem("a revision needs a message", field="message")])
    with tempfile.TemporaryDirectory(prefix="perfcycle-autogen-") as scratch:
        target = url or f"sqlite:///{Path(scratch) / 'autogen.db'}"
        upgrade(target)
        if not empty and not _model_changes(target):
            raise InvalidInput(
                [
                    Problem(
                        "the models match the migrations, nothing to generate "
                        "(empty=True writes a revision to fill in by hand)",
                        file="perfcycle/domain/models.py",
                    )
                ]
            )
        script = command.revision(
            alembic_config(target), message=message, autogenerate=not empty, rev_id=_next_rev_id()
        )
    assert script is not None and not isinstance(script, list)
    return Path(script.path)


# ---------------------------------------------------------------- used by migrations/env.py


def alembic_config(url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    # Numbered files (0001_initial.py) read in order; '%' is doubled for configparser.
    config.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    config.attributes["url"] = url
    return config


def context_options(dialect_name: str) -> dict[str, Any]:
    """Options shared by migrations, autogenerate and check(), so all three agree."""
    return {
        "target_metadata": Base.metadata,
        "compare_type": True,
        # SQLite cannot ALTER most things: batch mode copies the table instead.
        "render_as_batch": dialect_name == "sqlite",
        "render_item": _render_item,
    }


def _render_item(type_: str, obj: Any, _autogen_context: Any) -> str | bool:
    # Revisions are frozen history: write our TypeDecorators as their stock SQLAlchemy type so an
    # old revision never breaks when application code changes.
    if type_ == "type" and isinstance(obj, TypeDecorator):
        impl = obj.impl_instance
        if type(impl).__module__.startswith("sqlalchemy.sql"):
            return f"sa.{impl!r}"
    return False


# ---------------------------------------------------------------- helpers


def _resolve_url(url: str | None) -> str:
    resolved = url or get_settings().effective_database_url
    try:
        backend = make_url(resolved).get_backend_name()
    except ArgumentError as exc:
        raise InvalidInput([Problem(str(exc), field="database_url")]) from exc
    if backend not in SUPPORTED_BACKENDS:
        raise InvalidInput(
            [
                Problem(
                    f"unsupported database {backend!r}, use one of {', '.join(SUPPORTED_BACKENDS)}",
                    field="database_url",
                )
            ]
        )
    return resolved


def _run_command(fn: Any, url: str, revision: str) -> None:
    config = alembic_config(url)
    try:
        fn(config, revision)
    except CommandError as exc:
        # Raised before any change: unknown revision, ambiguous heads, or a database stamped
        # with a revision this code does not ship.
        raise InvalidInput([Problem(str(exc), field="revision")]) from exc


def _refuse_unversioned_schema(url: str) -> None:
    # Tables without a revision (Base.metadata.create_all, another tool): migrating would fail
    # half-way on "table exists"; say what is wrong instead.
    with _connect(url) as conn:
        if MigrationContext.configure(conn).get_current_revision() is not None:
            return
        ours = sorted(set(inspect(conn).get_table_names()) & set(Base.metadata.tables))
    if ours:
        shown = ", ".join(ours[:5]) + (", ..." if len(ours) > 5 else "")
        raise InvalidInput(
            [
                Problem(
                    f"{make_url(url).render_as_string(hide_password=True)} has perfcycle tables "
                    f"({shown}) but no migration revision: it was not built by migrations "
                    "(Base.metadata.create_all?); migrate an empty database instead",
                    field="database_url",
                )
            ]
        )


@contextmanager
def _connect(url: str) -> Iterator[Connection]:
    # A private engine, disposed at once: migrations must not leave pooled connections (with
    # SQLite pragmas changed, or holding a PostgreSQL database open) behind.
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def _model_changes(url: str) -> bool:
    with _connect(url) as conn:
        context = MigrationContext.configure(conn, opts=context_options(conn.dialect.name))
        return bool(compare_metadata(context, Base.metadata))


def _next_rev_id() -> str:
    script = ScriptDirectory.from_config(alembic_config())
    numbers = [int(rev.revision) for rev in script.walk_revisions() if rev.revision.isdigit()]
    return f"{max(numbers, default=0) + 1:04d}"


def _revision_difference(context: MigrationContext) -> list[str]:
    heads = set(ScriptDirectory.from_config(alembic_config()).get_heads())
    at = set(context.get_current_heads())
    if at == heads:
        return []
    return [f"database is at revision {_revs(at)}, the migrations' head is {_revs(heads)}"]


def _revs(revisions: set[str]) -> str:
    return ", ".join(sorted(revisions)) or "none (never migrated)"


def _audit_trigger_difference(conn: Connection) -> list[str]:
    if not inspect(conn).has_table("audit_events"):
        return []
    dialect = conn.dialect.name
    if dialect == "sqlite":
        sql = "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'audit_events'"
    else:
        # tgenabled 'D' is a disabled trigger: as good as none.
        sql = (
            "SELECT tgname FROM pg_trigger WHERE tgrelid = 'audit_events'::regclass "
            "AND NOT tgisinternal AND tgenabled <> 'D'"
        )
    present = set(conn.execute(text(sql)).scalars())
    return [
        f"trigger {name} on audit_events is missing or disabled (the table is append-only)"
        for name in AUDIT_TRIGGERS[dialect]
        if name not in present
    ]


def _describe(diff: Any) -> str:
    """One line a developer can act on, from one of Alembic's autogenerate diff tuples."""
    if isinstance(diff, list):
        return "; ".join(_describe(part) for part in diff)
    op, *args = diff
    if op.startswith("modify_"):
        _schema, table, column, _existing, old, new = args
        return f"{op} {table}.{column}: database has {old!r}, models have {new!r}"
    if op in ("add_column", "remove_column"):
        _schema, table, column = args
        return f"{op} {table}.{column.name}"
    return f"{op} {' '.join(_name(arg) for arg in args if arg is not None)}"


def _name(item: Any) -> str:
    if isinstance(item, Table):
        return item.name
    if isinstance(item, Column):
        return f"{item.table.name}.{item.name}"
    if isinstance(item, Index | ColumnCollectionConstraint):
        table = item.table.name if item.table is not None else "?"
        columns = ", ".join(c.name for c in item.columns)
        return f"{item.name} on {table}({columns})"
    return str(item)
