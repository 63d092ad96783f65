"""The write-behind ledger: rows queue in memory and a background task writes them in batches.

No request waits on the database. A batch is written every `interval_s` (0.25 s), or at once when
`max_batch` rows are waiting; a clean shutdown writes everything left. A crash (kill -9, power loss of
the process) loses what was not yet written: at most about the last second of rows.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import bindparam, update
from sqlalchemy.ext.asyncio import AsyncConnection

from hybridgate.store import Store, api_keys, ledger

log = logging.getLogger("hybridgate.ledger")

Row = dict[str, Any]


_COLUMNS = tuple(c.name for c in ledger.columns if c.name != "id")
# Columns a row may leave out (usage units beyond tokens, revision 0003), with what they then hold.
_OPTIONAL: Row = {"operation": None, "images": 0, "gpu_seconds": 0.0, "training_tokens": 0}


# SQLite: the largest INSERT has this many rows (a power of two), under SQLite's limit of bound values
# (32,766 from SQLite 3.32, else 999); a flush takes one INSERT per this many rows.
_SQLITE_MAX_ROWS = 1 << (
    ((32_766 if sqlite3.sqlite_version_info >= (3, 32) else 999) // len(_COLUMNS)).bit_length() - 1
)


@functools.cache
def _sqlite_insert_sql(rows: int) -> str:
    """One INSERT of up to `rows` rows (qmark placeholders), which SQLite runs as a single step.

    Rows past the batch's own are padded with NULLs and filtered out (`ts` is never NULL), so a batch of
    any size takes the next power of two: at most a dozen statement shapes, each cached here and in
    SQLite's statement cache (one shape per batch size grew the process by 100+ MB).
    """
    one = "(" + ", ".join(["?"] * len(_COLUMNS)) + ")"
    cols = ", ".join(_COLUMNS)
    picked = ", ".join(f"column{i + 1}" for i in range(len(_COLUMNS)))
    return (
        f"INSERT INTO {ledger.name} ({cols}) SELECT {picked} FROM (VALUES {', '.join([one] * rows)}) "
        "WHERE column1 IS NOT NULL"
    )


def _sqlite_shape(n: int) -> int:
    """The statement size for a batch of n rows: the next power of two (n must be <= _SQLITE_MAX_ROWS)."""
    return 1 << max(0, n - 1).bit_length()


async def _insert_rows(conn: AsyncConnection, batch: list[Row]) -> None:
    """Write a batch of ledger rows as plain tuples, the way the driver does it fastest.

    SQLAlchemy's per-row parameter processing cost about as much as the insert itself, so rows go to the
    driver as tuples (1,000 rows: 25 -> 12 ms). On SQLite they go as multi-row INSERTs: the sqlite3
    module releases and retakes the GIL for every row of an executemany, and while the event loop keeps
    the GIL busy, each retake waits, so a 1,000-row executemany took 0.1 to 0.9 s under load instead of
    10 ms (see benchmarks/README.md). One statement is one release.
    """
    if conn.dialect.name == "sqlite":
        for i in range(0, len(batch), _SQLITE_MAX_ROWS):
            part = batch[i : i + _SQLITE_MAX_ROWS]
            shape = _sqlite_shape(len(part))
            params = [r[c] for r in part for c in _COLUMNS]
            params += [None] * ((shape - len(part)) * len(_COLUMNS))
            await conn.exec_driver_sql(_sqlite_insert_sql(shape), tuple(params))
        return
    await conn.exec_driver_sql(
        _insert_sql(conn.dialect.paramstyle), [tuple(r[c] for c in _COLUMNS) for r in batch]
    )


@functools.cache
def _insert_sql(paramstyle: str) -> str:
    """INSERT for every ledger column in the driver's own placeholder style (qmark, numeric_dollar, ...)."""
    n = len(_COLUMNS)
    if paramstyle == "qmark":
        marks = ["?"] * n
    elif paramstyle == "numeric_dollar":
        marks = [f"${i}" for i in range(1, n + 1)]
    elif paramstyle == "numeric":
        marks = [f":{i}" for i in range(1, n + 1)]
    elif paramstyle in ("format", "pyformat"):
        marks = ["%s"] * n
    else:
        raise RuntimeError(f"ledger: unsupported DB-API paramstyle {paramstyle!r}")
    return f"INSERT INTO {ledger.name} ({', '.join(_COLUMNS)}) VALUES ({', '.join(marks)})"


class LedgerRecorder:
    """Queues ledger rows and writes them, with each key's spend, in one transaction per batch."""

    def __init__(
        self,
        store: Store,
        *,
        interval_s: float = 0.25,
        max_batch: int = 1000,
        max_pending: int = 200_000,
    ) -> None:
        self.store = store
        self.interval_s = interval_s
        self.max_batch = max_batch
        self.max_pending = max_pending
        self._rows: list[Row] = []
        # Cost per key of rows not yet committed (queued or being written): spend = database + this.
        self.pending_cost: dict[str, float] = defaultdict(float)
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.written = 0
        self.flushes = 0  # transactions that wrote rows
        self.dropped = 0
        self.failures = 0
        # Run after each flush while the lock is still held (the budget book's reload from the database).
        self.after_flush: Callable[[], Awaitable[None]] | None = None

    @property
    def pending(self) -> int:
        return len(self._rows)

    def add(self, row: Row) -> None:
        """Queue one row; never blocks and never fails (the request path calls this)."""
        if len(row) < len(_COLUMNS):
            row = {**_OPTIONAL, **row}
        self._rows.append(row)
        if row["key_id"] is not None and row["cost_usd"]:
            self.pending_cost[row["key_id"]] += row["cost_usd"]
        if len(self._rows) >= self.max_batch:
            self._wake.set()
        if len(self._rows) > self.max_pending:
            # The database has been failing for a long time; keep memory bounded, loudly.
            drop = self._rows[: len(self._rows) - self.max_pending]
            del self._rows[: len(drop)]
            self._forget(drop)
            self.dropped += len(drop)
            log.error("ledger: database unavailable too long, dropped %d oldest unwritten rows", len(drop))

    def _forget(self, rows: list[Row]) -> None:
        for r in rows:
            if r["key_id"] is not None and r["cost_usd"]:
                left = self.pending_cost[r["key_id"]] - r["cost_usd"]
                if left > 1e-12:
                    self.pending_cost[r["key_id"]] = left
                else:
                    del self.pending_cost[r["key_id"]]

    async def flush(self) -> int:
        """Write everything queued now; returns the number of rows written (0 on failure, rows kept)."""
        async with self._lock:
            n = await self._flush_locked()
            if self.after_flush is not None:
                await self.after_flush()
            return n

    async def _flush_locked(self) -> int:
        """Everything queued, in one transaction: its inserts (one statement per `_SQLITE_MAX_ROWS` rows on
        SQLite, one executemany elsewhere) and one executemany for the spend of every key in it.

        Each statement is a round trip through the event loop (aiosqlite's thread or the network hands its
        answer back as a callback), and a busy loop takes long to run it: at 4,000 streams a flush took 21 s
        when it cost a transaction per `max_batch` rows and an UPDATE per key. Now a flush costs the same
        few round trips however many rows and keys it carries, so the writer keeps up: when the loop is
        slow, the next flush simply carries more rows.
        """
        # Take the queue as it is; rows added meanwhile go to a fresh list and wait for the next flush.
        rows, self._rows = self._rows, []
        if not rows:
            return 0
        spend: dict[str, float] = defaultdict(float)
        for r in rows:
            if r["key_id"] is not None and r["cost_usd"]:
                spend[r["key_id"]] += r["cost_usd"]
        try:
            async with self.store.engine.begin() as conn:
                await _insert_rows(conn, rows)
                if spend:
                    await conn.execute(
                        update(api_keys)
                        .where(api_keys.c.id == bindparam("b_key"))
                        .values(spent_usd=api_keys.c.spent_usd + bindparam("b_amount")),
                        [{"b_key": k, "b_amount": v} for k, v in spend.items()],
                    )
        except BaseException as e:
            self._rows = rows + self._rows  # kept, in order, for the next try
            if not isinstance(e, Exception):
                raise  # cancelled: the rows are back in the queue for the final flush
            self.failures += 1
            if self.failures == 1 or self.failures % 40 == 0:
                log.error("ledger: cannot write %d rows (kept, retrying): %s", len(rows), e)
            return 0
        if self.failures:
            log.info("ledger: writing again after %d failed attempts", self.failures)
            self.failures = 0
        self._forget(rows)
        self.written += len(rows)
        self.flushes += 1
        return len(rows)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="ledger:flush")

    async def _loop(self) -> None:
        while not self._stopping:
            try:
                async with asyncio.timeout(self.interval_s):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            if self._stopping:
                return
            t0 = time.perf_counter()
            try:
                await self.flush()
            except Exception:  # a bug here must not stop the ledger for good
                log.exception("ledger: flush failed")
            if time.perf_counter() - t0 > 1.0:
                log.warning("ledger: a flush took %.2fs; the database is slow", time.perf_counter() - t0)

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the loop and write what is left (a clean shutdown loses nothing)."""
        deadline = time.monotonic() + timeout_s
        if self._task is not None:
            # Let a flush in progress finish rather than cancel it half-way through its transaction.
            self._stopping = True
            self._wake.set()
            try:
                async with asyncio.timeout(timeout_s):
                    await asyncio.shield(self._task)
            except TimeoutError:
                self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        while self._rows and time.monotonic() < deadline:
            async with self._lock:
                await self._flush_locked()
            if self._rows:
                await asyncio.sleep(0.2)
        if self._rows:
            log.error("ledger: %d rows could not be written before shutdown", len(self._rows))


__all__ = ["LedgerRecorder", "Row"]
