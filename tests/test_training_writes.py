"""The training service's write-behind queue in process, on a real SQLite file: a step's rows are queued,
written together (one executemany per statement, in an order that keeps each future's insert before its
result), kept queued when the database refuses them and written once it takes them again."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from _accounts import sqlite_url
from hybridgate.store import Store
from hybridgate.training._config import TrainingConfig
from hybridgate.training._service import _FINISH_FUTURE, _NEW_FUTURE, TrainingService


def _new(rid: str) -> tuple[Any, dict[str, Any]]:
    return _NEW_FUTURE, {
        "request_id": rid,
        "key_id": None,
        "run_id": None,
        "dedupe": None,
        "type": "optim_step",
        "created_at": time.time(),
    }


def _done(rid: str) -> tuple[Any, dict[str, Any]]:
    return _FINISH_FUTURE, {
        "rid": rid,
        "status": "done",
        "content_type": "application/json",
        "payload": b"{}",
        "error": None,
        "category": None,
        "finished_at": time.time(),
    }


def _rows(db: Path) -> dict[str, str]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT request_id, status FROM training_futures").fetchall())


async def _service(tmp_path: Path, delay: float) -> TrainingService:
    store = Store(sqlite_url(tmp_path))
    await store.open()
    cfg = TrainingConfig(data_dir=str(tmp_path / "training"), write_delay_s=delay, models={})
    return TrainingService(cfg, store, None, None)  # type: ignore[arg-type]  # no ledger or storage needed


def test_queued_rows_are_written_together_one_statement_each(tmp_path: Path) -> None:
    async def run() -> None:
        svc = await _service(tmp_path, 5.0)
        executed: list[int] = []

        @event.listens_for(svc.store.engine.sync_engine, "before_cursor_execute")
        def count(
            conn: Any, cursor: Any, statement: str, params: Any, context: Any, executemany: bool
        ) -> None:
            if "training_futures" in statement:
                executed.append(len(params) if executemany else 1)

        # Three steps' rows in the order a loop produces them: each future inserted, then finished.
        for i in range(3):
            svc._write_soon([_new(f"f{i}")])
            svc._write_soon([_done(f"f{i}")])
        assert _rows(tmp_path / "hybridgate.db") == {}  # queued: the delay is 5 s
        await svc.flush()
        assert _rows(tmp_path / "hybridgate.db") == {f"f{i}": "done" for i in range(3)}
        assert executed == [3, 3]  # one executemany for the inserts, one for the results: not six
        assert svc._flush_timer is None  # nothing left to write, nothing scheduled
        await svc.close()
        await svc.store.close()

    asyncio.run(run())


def test_rows_the_database_refuses_stay_queued_and_are_written_when_it_takes_them(tmp_path: Path) -> None:
    db = tmp_path / "hybridgate.db"

    async def run() -> None:
        svc = await _service(tmp_path, 0.05)
        with sqlite3.connect(db) as conn:  # the table gone: every write fails
            conn.execute("ALTER TABLE training_futures RENAME TO away")
        svc._write_soon([_new("a")])
        svc._write_soon([_done("a")])
        with pytest.raises(Exception, match="training_futures"):
            await svc.flush()  # a read's flush fails loudly; the rows are kept, in order
        assert [p.get("request_id", p.get("rid")) for _, p in svc._unwritten] == ["a", "a"]
        assert svc._flush_timer is not None  # and tried again in the background
        with sqlite3.connect(db) as conn:
            conn.execute("ALTER TABLE away RENAME TO training_futures")
        async with asyncio.timeout(10):
            while _rows(db) != {"a": "done"}:  # noqa: ASYNC110 - waiting on the retry timer, under a deadline
                await asyncio.sleep(0.05)
        assert svc._unwritten == []
        svc._write_soon([_new("b")])  # shutdown writes what waits
        await svc.close()
        assert _rows(db) == {"a": "done", "b": "pending"}
        await svc.store.close()

    asyncio.run(run())
