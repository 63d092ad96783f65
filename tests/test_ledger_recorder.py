"""The write-behind recorder in process, on a real SQLite file: batching, failures, shutdown."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from sqlalchemy import text

from _accounts import ledger_rows, sqlite_url
from hybridgate.auth import KeyStore
from hybridgate.ledger import LedgerRecorder
from hybridgate.store import Store


def row(i: int, key_id: str | None = None, cost: float = 0.0) -> dict[str, Any]:
    return {
        "ts": time.time(), "day": "2025-01-01", "request_id": f"r{i}", "key_id": key_id, "key_name": "k",
        "model": "m", "backend": "b", "backend_model": "bm", "input_tokens": 1, "output_tokens": 2,
        "estimated": False, "duration_s": 0.01, "status": 200, "ok": True, "streamed": False, "error": None,
        "cost_usd": cost,
    }  # fmt: skip


def test_rows_are_written_in_batches_with_each_keys_spend(tmp_path: Path) -> None:
    db = sqlite_url(tmp_path)

    async def run() -> float:
        store = Store(db)
        await store.open()
        key = (await KeyStore(store).create("k")).record
        rec = LedgerRecorder(store, interval_s=0.05, max_batch=7)
        await rec.start()
        for i in range(50):
            rec.add(row(i, key.id, 0.01))
        assert rec.pending_cost[key.id] > 0
        async with asyncio.timeout(10):  # the background loop writes them, without a flush() from here
            while rec.written < 50:  # noqa: ASYNC110 - polling another task's progress, under a deadline
                await asyncio.sleep(0.02)
        await rec.stop()
        assert dict(rec.pending_cost) == {}
        [after] = await KeyStore(store).all()
        await store.close()
        return after.spent_usd

    spent = asyncio.run(run())
    assert abs(spent - 0.5) < 1e-9
    assert [r["request_id"] for r in ledger_rows(db)] == [f"r{i}" for i in range(50)]


def test_a_failing_database_keeps_rows_until_it_recovers_and_stop_flushes_them(tmp_path: Path) -> None:
    db = sqlite_url(tmp_path)

    async def run() -> None:
        store = Store(db)
        await store.open()
        rec = LedgerRecorder(store, interval_s=3600)  # only explicit flushes in this test
        await rec.start()
        async with store.engine.begin() as conn:
            await conn.execute(text("ALTER TABLE ledger RENAME TO ledger_away"))
        rec.add(row(1))
        rec.add(row(2))
        assert await rec.flush() == 0 and rec.pending == 2 and rec.failures == 1
        async with store.engine.begin() as conn:
            await conn.execute(text("ALTER TABLE ledger_away RENAME TO ledger"))
        rec.add(row(3))
        await rec.stop()  # a clean shutdown writes everything, in order
        assert rec.pending == 0
        await store.close()

    asyncio.run(run())
    assert [r["request_id"] for r in ledger_rows(db)] == ["r1", "r2", "r3"]


def test_a_large_batch_on_sqlite_is_written_whole_and_in_order_with_its_values_intact(tmp_path: Path) -> None:
    db = sqlite_url(tmp_path)

    async def run() -> list[Any]:
        store = Store(db)
        await store.open()
        rec = LedgerRecorder(store, max_batch=1000)
        for i in range(2345):  # several multi-row INSERTs of different sizes, and a remainder of one
            r = row(i, None, 0.0)
            r["estimated"], r["error"], r["input_tokens"] = i % 2 == 0, (f"e{i}" if i % 3 == 0 else None), i
            rec.add(r)
        assert await rec.flush() == 2345
        async with store.engine.connect() as conn:
            got = (
                await conn.execute(
                    text("SELECT request_id, input_tokens, estimated, error FROM ledger ORDER BY id")
                )
            ).all()
        await store.close()
        return list(got)

    got = asyncio.run(run())
    assert len(got) == 2345
    assert [g[0] for g in got] == [f"r{i}" for i in range(2345)]
    assert got[6] == ("r6", 6, True, "e6") and got[7] == ("r7", 7, False, None)


def test_sqlite_insert_shapes_are_few_powers_of_two_that_fit_every_batch() -> None:
    # One statement shape per batch size grew the process by 100+ MB (each shape is cached twice).
    from hybridgate.ledger._recorder import _SQLITE_MAX_ROWS, _sqlite_shape

    shapes = {_sqlite_shape(n) for n in range(1, _SQLITE_MAX_ROWS + 1)}
    assert all(_sqlite_shape(n) >= n for n in range(1, _SQLITE_MAX_ROWS + 1))
    assert all(s & (s - 1) == 0 for s in shapes) and len(shapes) <= 11
