"""Costs, budgets and rate limits for one gateway process, plugged into the router as per-call hooks."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from sqlalchemy import select

from hybridgate.ledger._budget import BudgetBook
from hybridgate.ledger._cost import worst_case
from hybridgate.ledger._limits import RateLimiter
from hybridgate.ledger._metrics import LedgerMetrics
from hybridgate.ledger._recorder import LedgerRecorder
from hybridgate.protocol import BudgetExceededError, PermissionDeniedError, RateLimitedError
from hybridgate.store import Store, api_keys

if TYPE_CHECKING:
    from hybridgate.auth import Principal
    from hybridgate.backends import BackendRequest
    from hybridgate.config import BackendConfig
    from hybridgate.router import Attempt, BackendState

log = logging.getLogger("hybridgate.ledger")

# A reservation nobody settles (a stream that never finished settling) lapses this long after the
# backend's own total timeout, so a bug cannot hold a key's budget forever.
_RESERVATION_GRACE_S = 60.0
_MAX_ERROR_CHARS = 1000


class Ledger:
    """Owns the write-behind recorder, the budget book and the rate limiter of this process."""

    def __init__(self, store: Store, registry: CollectorRegistry, *, reload_s: float = 2.0) -> None:
        self.store = store
        self.recorder = LedgerRecorder(store)
        self.book = BudgetBook()
        self.limiter = RateLimiter()
        self.reload_s = reload_s
        self._reloaded_at = 0.0
        # key id -> (name, budget) of keys with a budget, for the budget-remaining gauge
        self._budgets: dict[str, tuple[str, float]] = {}
        self.metrics = LedgerMetrics(registry, self._budget_rows, lambda: self.recorder.pending)
        self._spend_children: dict[tuple[str, str, str], Any] = {}  # labelled counters, looked up once
        self._day = ("", 0.0, 0.0)  # (UTC day, its start, its end): strftime once a day, not per row
        self.recorder.after_flush = self._maybe_reload

    # --- lifespan -------------------------------------------------------------------------------
    async def start(self) -> None:
        """Load every key's spend from the database, then start writing behind requests."""
        async with asyncio.timeout(30):
            await self._reload()
        await self.recorder.start()

    async def stop(self) -> None:
        await self.recorder.stop()

    async def flush(self) -> None:
        """Write every queued row now (reports call this first, so they include the latest calls)."""
        await self.recorder.flush()

    async def _maybe_reload(self) -> None:
        if time.monotonic() - self._reloaded_at >= self.reload_s:
            try:
                await self._reload()
            except Exception as e:  # keep the in-memory book; the next flush tries again
                log.warning("ledger: cannot reload spend from the database: %s", e)

    async def _reload(self) -> None:
        """Spend per key = the database's total (all replicas) + this process's rows not yet written.

        Runs under the recorder's lock, so no batch is between the two; other replicas' spend shows up here.
        """
        async with self.store.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(api_keys.c.id, api_keys.c.name, api_keys.c.budget_usd, api_keys.c.spent_usd)
                )
            ).all()
        pending = self.recorder.pending_cost
        self.book.spent = {r.id: float(r.spent_usd or 0.0) + pending.get(r.id, 0.0) for r in rows}
        self._budgets = {r.id: (r.name, float(r.budget_usd)) for r in rows if r.budget_usd is not None}
        self._reloaded_at = time.monotonic()

    def _budget_rows(self) -> Iterator[tuple[str, str, float, float]]:
        for key_id, (name, budget) in list(self._budgets.items()):
            yield key_id, name, budget - self.book.spent.get(key_id, 0.0), self.book.in_flight(key_id)

    # --- policy ---------------------------------------------------------------------------------
    def hooks_for(self, principal: Principal, request_id: str) -> CallPolicy:
        """Per call: apply the key's requests-per-minute limit, then hand the router this call's hooks."""
        if principal.rpm is not None and principal.key_id is not None:
            wait = self.limiter.hit(principal.key_id, principal.rpm)
            if wait is not None:
                self.metrics.rejected.labels(principal.key_id, principal.name, "rate_limit").inc()
                retry = RateLimiter.retry_after(wait)
                raise RateLimitedError(
                    f"API key '{principal.name}' is limited to {principal.rpm} requests per minute; "
                    f"retry in {retry}s.",
                    headers={"Retry-After": retry},
                )
        return CallPolicy(self, principal, request_id)

    def reserve(self, p: Principal, backend: BackendConfig, req: BackendRequest) -> int | None:
        """Reserve this attempt's worst-case cost against the key's budget, or refuse the backend."""
        assert p.key_id is not None and p.budget_usd is not None
        self._budgets[p.key_id] = (p.name, p.budget_usd)  # the gauge shows a new key before the next reload
        price = backend.price_for(str(req.body.get("model", "")))
        if price.is_zero:
            if price.free:
                return None  # really free (the mock, the local model): never blocked by a budget
            self.metrics.rejected.labels(p.key_id, p.name, "unknown_cost").inc()
            raise PermissionDeniedError(
                f"Backend '{backend.name}' has no price for model '{req.public_model}' in the "
                "configuration (nor in the price catalogue), so what this call costs is "
                f"unknown; API key '{p.name}' has a budget and may only use priced backends or ones marked "
                "`price: {free: true}`.",
                param="model",
                code="unknown_cost",
            )
        wc = worst_case(backend, req.body, req.endpoint, req.max_tokens)
        ttl = backend.timeouts.total_s + _RESERVATION_GRACE_S
        rid = self.book.try_reserve(p.key_id, p.budget_usd, wc.cost_usd, ttl)
        if rid is None:
            self.metrics.rejected.labels(p.key_id, p.name, "budget").inc()
            spent = self.book.spent.get(p.key_id, 0.0)
            in_flight = self.book.in_flight(p.key_id)
            held = f" (and ${in_flight:.6f} is reserved by its calls in flight)" if in_flight else ""
            raise BudgetExceededError(
                f"API key '{p.name}' has spent ${spent:.6f} of its ${p.budget_usd:.6f} budget{held}; "
                f"this call could cost {wc.describe()} on backend '{backend.name}'. "
                "Lower max_tokens, or raise the key's budget."
            )
        return rid

    def record(
        self,
        p: Principal,
        request_id: str,
        model: str,
        a: Attempt,
        reservation: int | None,
        operation: str | None = None,
    ) -> None:
        """Settle the attempt against the budget and queue its ledger row (memory only; never awaits)."""
        cost = a.cost_usd
        self.book.settle(p.key_id, reservation, cost)
        now = time.time()
        day, start, end = self._day
        if not start <= now < end:
            start = now - now % 86400
            day, end = time.strftime("%Y-%m-%d", time.gmtime(now)), start + 86400
            self._day = (day, start, end)
        self.recorder.add(
            {
                "ts": now,
                "day": day,
                "request_id": request_id[:64],
                "key_id": p.key_id,
                "key_name": p.name,
                "model": model,
                "backend": a.backend,
                "backend_model": a.backend_model,
                "input_tokens": a.usage.prompt_tokens,
                "output_tokens": a.usage.completion_tokens,
                "estimated": a.usage.estimated,
                "duration_s": a.duration_s,
                "status": a.status,
                "ok": a.ok,
                "streamed": a.streamed,
                "error": a.error[:_MAX_ERROR_CHARS] if a.error else None,
                "cost_usd": cost,
                "operation": operation,
                "images": a.usage.images,
                "gpu_seconds": a.usage.gpu_seconds,
                "training_tokens": a.usage.training_tokens,
            }
        )
        if cost:
            labels = (p.key_id or "", p.name, a.backend)
            child = self._spend_children.get(labels)
            if child is None:
                child = self._spend_children[labels] = self.metrics.spend.labels(*labels)
            child.inc(cost)


class CallPolicy:
    """The router's hooks for one call: reserve before each attempt, settle and record after it."""

    __slots__ = ("_ledger", "_open", "principal", "request_id")

    def __init__(self, ledger: Ledger, principal: Principal, request_id: str) -> None:
        self._ledger = ledger
        self.principal = principal
        self.request_id = request_id
        self._open: dict[str, tuple[int | None, str, str]] = {}

    async def before_attempt(self, state: BackendState, req: BackendRequest) -> None:
        p = self.principal
        rid = None
        if p.budget_usd is not None and p.key_id is not None:
            rid = self._ledger.reserve(p, state.backend.config, req)
        self._open[state.name] = (rid, req.public_model, str(req.endpoint))

    async def after_attempt(self, state: BackendState, attempt: Attempt) -> None:
        rid, model, operation = self._open.pop(state.name, (None, "", ""))
        self._ledger.record(self.principal, self.request_id, model, attempt, rid, operation or None)


__all__ = ["CallPolicy", "Ledger"]
