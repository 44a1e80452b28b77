"""Alembic environment, driven by perfcycle.core.migrate (the URL arrives in config.attributes)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, text

from perfcycle.core.db import make_engine
from perfcycle.core.migrate import context_options
from perfcycle.core.settings import get_settings

# Any constant will do: it serialises processes upgrading one PostgreSQL database at once.
PG_MIGRATION_LOCK = 727_275


def configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        # perfcycle.core.db's SQLite engine opens real transactions (BEGIN IMMEDIATE) and SQLite can
        # roll DDL back, so on both backends the whole upgrade is one transaction: a failure
        # leaves the database exactly as it was.
        transactional_ddl=True,
        **context_options(connection.dialect.name),
    )


def run_sqlite(connection: Connection) -> None:
    # Batch mode drops and recreates tables, which enforced foreign keys forbid or cascade.
    # SQLite's own recipe: enforcement off outside the transaction (the pragma is ignored inside
    # one), then check every key before committing. Raw driver call: no autobegin.
    raw = connection.connection.driver_connection
    assert raw is not None
    raw.execute("PRAGMA foreign_keys=OFF")
    try:
        configure(connection)
        with context.begin_transaction():
            context.run_migrations()
            broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise RuntimeError(f"migration left foreign keys pointing nowhere: {broken[:5]}")
    finally:
        raw.execute("PRAGMA foreign_keys=ON")


def run_postgresql(connection: Connection) -> None:
    configure(connection)
    with context.begin_transaction():
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_MIGRATION_LOCK})
        context.run_migrations()


def run_migrations_online() -> None:
    url = context.config.attributes.get("url") or get_settings().effective_database_url
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            if connection.dialect.name == "sqlite":
                run_sqlite(connection)
            else:
                run_postgresql(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise RuntimeError("offline (--sql) migrations are not supported: pass a database URL")
run_migrations_online()
