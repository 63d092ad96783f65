"""The write-behind recorder in process, on a real SQLite file: batching, failures, shutdown."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from sqlalchemy import event, text

from _accounts import ledger_rows, sqlite_url
from hybridgate.auth import KeyStore
from hybridgate.ledger import LedgerRecorder
from hybridgate.ledger._recorder import _SQLITE_MAX_ROWS
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


def test_a_flush_costs_the_same_few_statements_however_many_rows_and_keys_it_carries(tmp_path: Path) -> None:
    # Every statement is a round trip through the event loop; a busy loop makes each one slow, so a writer
    # whose statements per flush grow with rows or keys falls behind exactly when the gateway is busiest.
    db = sqlite_url(tmp_path)

    async def run() -> tuple[int, int, list[Any]]:
        store = Store(db)
        await store.open()
        keys = [(await KeyStore(store).create(f"k{i}")).record for i in range(40)]
        rec = LedgerRecorder(store, interval_s=3600, max_batch=100)
        statements: list[str] = []
        event.listen(
            store.engine.sync_engine,
            "before_cursor_execute",
            lambda conn, cursor, stmt, params, ctx, many: statements.append(stmt),
        )
        n = 2 * _SQLITE_MAX_ROWS + 10
        for i in range(n):
            rec.add(row(i, keys[i % 40].id, 0.001))
        assert await rec.flush() == n
        writes = [s for s in statements if s.lstrip().upper().startswith(("INSERT", "UPDATE"))]
        spent = [k.spent_usd for k in await KeyStore(store).all()]
        await store.close()
        return len(writes), rec.flushes, spent

    writes, flushes, spent = asyncio.run(run())
    assert writes == 3 + 1  # three INSERTs (two full, one partial) and one UPDATE for the 40 keys' spend
    assert flushes == 1
    n = 2 * _SQLITE_MAX_ROWS + 10
    assert sorted(round(s, 6) for s in spent) == sorted(
        round(0.001 * len(range(k, n, 40)), 6) for k in range(40)
    )


def test_no_row_is_lost_while_the_event_loop_is_saturated(tmp_path: Path) -> None:
    # Requests keep adding rows while the loop is kept busy (callbacks that hold it for a while, many tasks
    # always ready to run): every row reaches the database, in order, and each key's spend with it.
    db = sqlite_url(tmp_path)
    n_rows = 6000

    async def run() -> tuple[float, int, int]:
        store = Store(db)
        await store.open()
        key = (await KeyStore(store).create("k")).record
        rec = LedgerRecorder(store, interval_s=0.05, max_batch=200)
        await rec.start()
        stop = asyncio.Event()

        async def hog() -> None:  # holds the loop 5 ms at a time, as thousands of busy streams would
            while not stop.is_set():
                t = time.perf_counter()
                while time.perf_counter() - t < 0.005:
                    pass
                await asyncio.sleep(0)

        hogs = [asyncio.create_task(hog()) for _ in range(20)]
        for i in range(n_rows):
            rec.add(row(i, key.id, 0.0001))
            if i % 100 == 99:
                await asyncio.sleep(0)
        deadline = time.monotonic() + 30
        while rec.written < n_rows and time.monotonic() < deadline:  # noqa: ASYNC110 - under a deadline
            await asyncio.sleep(0.01)
        written_while_busy = rec.written
        stop.set()
        await asyncio.gather(*hogs)
        await rec.stop()
        [after] = await KeyStore(store).all()
        await store.close()
        return after.spent_usd, written_while_busy, rec.dropped

    spent, written_while_busy, dropped = asyncio.run(run())
    assert written_while_busy == n_rows  # kept up while the loop was saturated, not only at shutdown
    assert dropped == 0
    assert [r["request_id"] for r in ledger_rows(db)] == [f"r{i}" for i in range(n_rows)]
    assert abs(spent - n_rows * 0.0001) < 1e-6
