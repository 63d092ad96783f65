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
