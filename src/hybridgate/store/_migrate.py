"""Alembic migrations, run programmatically at start (and by `hybridgate db upgrade`).

The scripts ship inside the package (store/migrations), so an installed gateway can migrate its own
database. Two gateways starting at once against one database must not both create tables: a file lock
serialises them on SQLite, an advisory lock on PostgreSQL.

Alembic costs about 0.4 s to import, so it is only imported when the database is not already at HEAD:
a start or a CLI command against an up-to-date database reads one row and moves on.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from hybridgate.store._engine import sqlite_path

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

MIGRATIONS = Path(__file__).parent / "migrations"
# Any fixed 64-bit number; only hybridgate's migrations take this advisory lock.
_PG_LOCK_ID = 0x6879627269646761
# The newest file in migrations/versions; tests/test_migrations.py checks that Alembic agrees.
HEAD = "0007"


def alembic_config() -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def head_revision() -> str:
    """The head according to Alembic's scripts (HEAD is the cheap copy)."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


@contextlib.asynccontextmanager
async def _file_lock(database: str) -> AsyncIterator[None]:
    path = sqlite_path(database)
    if path is None:
        yield
        return
    with open(path.with_name(path.name + ".migrate-lock"), "a") as fh:  # noqa: ASYNC230 - once, at start
        # Waited for in a thread: another process may hold it for the few milliseconds a migration takes.
        await asyncio.to_thread(fcntl.flock, fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run(conn: Connection, action: str, revision: str) -> None:
    from alembic import command

    cfg = alembic_config()
    cfg.attributes["connection"] = conn
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _PG_LOCK_ID})
    if action == "upgrade":
        command.upgrade(cfg, revision)
    else:
        command.downgrade(cfg, revision)


def _current(conn: Connection) -> str | None:
    try:
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except DBAPIError:  # no alembic_version table: an empty database
        conn.rollback()
        return None


async def migrate(
    engine: AsyncEngine, database: str, revision: str = "head", *, action: str = "upgrade"
) -> None:
    """Bring the database to `revision` (upgrade by default) under a cross-process lock."""
    if action == "upgrade" and revision in ("head", HEAD) and await current_revision(engine) == HEAD:
        return
    async with _file_lock(database):
        async with engine.begin() as conn:
            await conn.run_sync(_run, action, revision)


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(_current)


__all__ = ["HEAD", "MIGRATIONS", "alembic_config", "current_revision", "head_revision", "migrate"]
