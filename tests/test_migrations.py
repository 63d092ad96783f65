"""The schema: migrations from an empty database, upgrades from the first revision, and racing starts."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

import _accounts
from _accounts import gateway_config, ledger_rows
from hybridgate.auth import KeyStore
from hybridgate.store import Store, current_revision, head_revision, migrate
from hybridgate.store._migrate import HEAD

database = _accounts.database  # fixtures: SQLite, and PostgreSQL when configured
pg_database = _accounts.pg_database


def test_an_empty_database_is_migrated_to_head_at_open(database: str) -> None:
    async def run() -> tuple[str | None, set[str]]:
        store = Store(database)
        await store.open()
        try:
            async with store.engine.connect() as conn:
                names = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
            return await current_revision(store.engine), names
        finally:
            await store.close()

    rev, names = asyncio.run(run())
    # HEAD is what lets an up-to-date start skip importing Alembic: it must be the scripts' real head.
    assert rev == head_revision() == HEAD
    assert {"api_keys", "ledger", "alembic_version"} <= names


def test_upgrade_from_the_first_revision_keeps_existing_keys(database: str) -> None:
    async def run() -> None:
        store = Store(database)
        try:
            await migrate(store.engine, database, "0001")
            assert await current_revision(store.engine) == "0001"
            async with store.engine.begin() as conn:
                cols = await conn.run_sync(lambda c: {x["name"] for x in inspect(c).get_columns("api_keys")})
                assert "spent_usd" not in cols  # the first revision's shape
                await conn.execute(
                    text(
                        "INSERT INTO api_keys (id, name, prefix, key_hash, budget_usd, created_at) "
                        "VALUES ('key_old', 'old', 'hg-oldoldol', :h, 5.0, :t)"
                    ),
                    {"h": "0" * 64, "t": time.time()},
                )
            await store.open()  # what a newer gateway does at start
            assert await current_revision(store.engine) == head_revision()
            [old] = await KeyStore(store).all()
            assert (old.id, old.name, old.budget_usd, old.spent_usd) == ("key_old", "old", 5.0, 0.0)
            async with store.engine.begin() as conn:
                await conn.execute(
                    text(
                        "INSERT INTO ledger (ts, day, request_id, key_id, key_name, model, backend, "
                        "backend_model, input_tokens, output_tokens, estimated, duration_s, status, ok, "
                        "streamed, cost_usd) VALUES (1.0, '1970-01-01', 'r1', 'key_old', 'old', 'm', 'b', "
                        "'bm', 1, 2, false, 0.1, 200, true, false, 0.5)"
                    )
                )
            # Down to nothing and back up: every revision's downgrade works too.
            await migrate(store.engine, database, "base", action="downgrade")
            assert await current_revision(store.engine) is None
            await migrate(store.engine, database, "head")
            assert await current_revision(store.engine) == head_revision()
        finally:
            await store.close()

    asyncio.run(run())
    assert ledger_rows(database) == []


def test_ledger_rows_from_before_usage_units_keep_their_meaning(database: str) -> None:
    """Revision 0003 adds the operation and units beyond tokens; rows written before read as zero units."""
    from hybridgate.ledger import usage_report

    async def run() -> dict[str, object]:
        store = Store(database)
        try:
            await migrate(store.engine, database, "0002")
            async with store.engine.begin() as conn:
                await conn.execute(
                    text(
                        "INSERT INTO ledger (ts, day, request_id, key_id, key_name, model, backend, "
                        "backend_model, input_tokens, output_tokens, estimated, duration_s, status, ok, "
                        "streamed, cost_usd) VALUES (1.0, '1970-01-01', 'r1', NULL, 'old', 'm', 'b', "
                        "'bm', 10, 20, false, 0.1, 200, true, false, 0.25)"
                    )
                )
            await store.open()
            assert await current_revision(store.engine) == HEAD
            return await usage_report(store, group_by="model")
        finally:
            await store.close()

    report = asyncio.run(run())
    [row] = report["data"]  # type: ignore[index]
    assert row["group"] == "m" and (row["input_tokens"], row["output_tokens"], row["cost_usd"]) == (
        10,
        20,
        0.25,
    )
    assert (row["images"], row["gpu_seconds"], row["training_tokens"]) == (0, 0.0, 0)


def test_two_processes_migrating_one_new_sqlite_file_at_once_both_succeed(tmp_path: Path) -> None:
    cfg = gateway_config(
        f"sqlite:///{tmp_path / 'race.db'}", [{"name": "m", "kind": "mock", "models": {"m": "m"}}], tmp_path
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "hybridgate", "db", "upgrade", "--config", str(cfg)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert f"at revision {head_revision()}" in err


def test_an_unreachable_database_is_exit_code_2_naming_it(tmp_path: Path) -> None:
    from _accounts import cli

    cfg = gateway_config(
        "postgresql://nobody@127.0.0.1:1/none",
        [{"name": "m", "kind": "mock", "models": {"m": "m"}}],
        tmp_path,
    )
    r = cli("keys", "list", "--config", str(cfg))
    assert r.code == 2, r.err
    assert "postgresql://nobody@127.0.0.1:1/none" in r.err


@pytest.mark.parametrize("url", ["mysql://x/y", "not a url"])
def test_an_unsupported_database_url_is_refused_clearly(url: str) -> None:
    from hybridgate.store import StoreError, async_url

    with pytest.raises(StoreError, match="database:"):
        async_url(url)
