"""Helpers shared by the keys, ledger, budget, usage and migration tests (real processes, real databases)."""

from __future__ import annotations

import asyncio
import os
import secrets
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from hybridgate.testing.procs import write_config

PG_URL = os.environ.get("HYBRIDGATE_TEST_POSTGRES_URL", "")
PG_SKIP = (
    "PostgreSQL tests need HYBRIDGATE_TEST_POSTGRES_URL (e.g. postgresql://postgres@127.0.0.1:5432/test)"
)
MSG = [{"role": "user", "content": "In one word, can you provide me the capital of France?"}]


def wait_until(
    pred: Callable[[], Any], timeout: float = 10.0, what: str = "condition", every: float = 0.05
) -> Any:
    """Poll `pred` until it returns something truthy (which is returned), or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return orjson.loads(self.out)


def cli(
    *args: str, env: dict[str, str] | None = None, cwd: str | os.PathLike[str] | None = None
) -> CliResult:
    """Run `hybridgate ARGS` in a child process, as a person would."""
    p = subprocess.run(
        [sys.executable, "-m", "hybridgate", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )
    return CliResult(p.returncode, p.stdout, p.stderr)


def gateway_config(database: str, backends: list[dict[str, Any]], directory: Path) -> Path:
    return write_config({"database": database, "backends": backends}, directory)


def sqlite_url(directory: Path) -> str:
    return f"sqlite:///{directory / 'hybridgate.db'}"


def _pg_admin(sql: str) -> None:
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(PG_URL)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards (reruns start clean)."""
    if not PG_URL:
        pytest.skip(PG_SKIP)
    name = "hg_test_" + secrets.token_hex(6)
    try:
        _pg_admin(f'CREATE DATABASE "{name}"')
    except Exception as e:  # configured but unusable: say so rather than fail every test obscurely
        pytest.skip(f"PostgreSQL at HYBRIDGATE_TEST_POSTGRES_URL cannot create a database: {e}")
    base, _, _ = PG_URL.rpartition("/")
    yield f"{base}/{name}"
    _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test that takes it runs once on a SQLite file and once on PostgreSQL (skipped without one)."""
    if request.param == "sqlite":
        return sqlite_url(tmp_path)
    return str(request.getfixturevalue("pg_database"))


def ledger_rows(database: str, where: str = "", params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    """Read ledger rows straight from the database (what a later audit would see)."""
    sql = "SELECT * FROM ledger" + (f" WHERE {where}" if where else "") + " ORDER BY id"
    if database.startswith("sqlite"):
        conn = sqlite3.connect(database.removeprefix("sqlite:///"))
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute(sql.replace("$1", "?"), params)]
        finally:
            conn.close()
    import asyncpg

    async def run() -> list[dict[str, Any]]:
        conn = await asyncpg.connect(database)
        try:
            return [dict(r) for r in await conn.fetch(sql, *params)]
        finally:
            await conn.close()

    return asyncio.run(run())
