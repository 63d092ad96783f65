"""The backend manager: choose candidates for a request, try them in order, keep the stream contract.

It also owns the backends' lives: it starts and closes them, runs their health checks, and takes backends
added and removed while serving (a cloud pod that became ready, one that stopped).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from hybridgate._capacity import QueueFull
from hybridgate.backends import Backend, BackendError, BackendModelMissingError, BackendRequest
from hybridgate.config import BackendConfig
from hybridgate.ledger._pricing import attempt_cost
from hybridgate.protocol import (
    BadRequestError,
    Endpoint,
    GatewayError,
    ModelNotFoundError,
    UpstreamUnavailableError,
    Usage,
    prompt_text,
)
from hybridgate.router._health import BackendState, health_loop

log = logging.getLogger("hybridgate.router")
_T = TypeVar("_T")
_R = TypeVar("_R")

# What an attempt cost: the ledger's rule (prices x usage units), injectable for tests and embedders.
Pricer = Callable[[BackendConfig, "Attempt"], float]
# How often a request waiting for a warming backend looks again (a loading model flips a flag in a thread).
_WARM_POLL_S = 0.02


@dataclass(slots=True)
class Attempt:
    """One try against one backend; every attempt is reported (headers, logs, ledger)."""

    backend: str
    backend_model: str
    ok: bool = False
    error: str | None = None
    status: int | None = None
    duration_s: float = 0.0
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    streamed: bool = False

    @property
    def reached_backend(self) -> bool:
        """False for backends skipped (unhealthy, loading) or refused by policy before any call."""
        return self.ok or self.duration_s > 0


class CallHooks(Protocol):
    """Per-call policy plugged in by the API layer (budgets, ledger). Both may be no-ops."""

    async def before_attempt(self, state: BackendState, req: BackendRequest) -> None:
        """Raise a GatewayError to refuse this backend for this call (e.g. over budget)."""

    async def after_attempt(self, state: BackendState, attempt: Attempt) -> None:
        """Called once for each attempt that reached a backend, with its final usage and cost."""


class _NoHooks:
    async def before_attempt(self, state: BackendState, req: BackendRequest) -> None:
        return None

    async def after_attempt(self, state: BackendState, attempt: Attempt) -> None:
        return None


NO_HOOKS: CallHooks = _NoHooks()


@dataclass(slots=True)
class Call:
    """A validated request on its way to a backend."""

    endpoint: Endpoint
    body: dict[str, Any]
    model: str
    max_tokens: int | None = None
    forced: str | None = None
    preferred: str | None = None
    hooks: CallHooks = NO_HOOKS


@dataclass(slots=True)
class Result:
    body: dict[str, Any]
    backend: str
    attempts: list[Attempt]

    @property
    def cost_usd(self) -> float:
        return sum(a.cost_usd for a in self.attempts)


def _estimate_tokens(chars: int) -> int:
    # About four characters a token for English text; only used when a backend reports no usage.
    return max(1, (chars + 3) // 4) if chars else 0


class BackendManager:
    """Owns the backends, their health states and the routing rules. One per app.

    Backends may be added and removed while serving: the model map is rebuilt and swapped whole, so a
    request plans against one consistent view, and a removed backend drains (no new calls) before it closes.
    """

    def __init__(
        self,
        backends: Sequence[Backend],
        priority_override: Sequence[str] = (),
        *,
        pricer: Pricer = attempt_cost,
        warming_wait_s: float = 30.0,
    ) -> None:
        self.states: dict[str, BackendState] = {b.name: BackendState(b) for b in backends}
        self._override = [p.strip() for p in priority_override if p.strip()]
        known = {b.name for b in backends} | {b.config.group for b in backends if b.config.group}
        unknown = [p for p in self._override if p not in known]
        if unknown:
            raise ValueError(
                f"HYBRIDGATE_PRIORITY names {', '.join(unknown)}, which is neither a backend name nor a group "
                f"(known: {', '.join(sorted(known))})"
            )
        self.pricer = pricer
        self.warming_wait_s = warming_wait_s
        self._order = list(self.states)  # declaration order: the last tie-breaker
        self.by_model: dict[str, list[BackendState]] = {}
        self._common_ops: dict[str, frozenset[str]] = {}
        self._rebuild()
        # Background work per backend (health checks, the models check), cancelled when it goes.
        self._tasks: dict[str, list[asyncio.Task[None]]] = {}
        self._started = False

    def _rebuild(self) -> None:
        """Recompute the model map from the current backends and swap it in whole."""

        def rank(item: tuple[int, BackendState]) -> tuple[int, int, int]:
            i, st = item
            b = st.backend
            pos = next(
                (k for k, p in enumerate(self._override) if p in (b.name, b.config.group)),
                len(self._override),
            )
            return (pos, b.config.priority, i)

        states = [self.states[n] for n in self._order if n in self.states]
        by_model: dict[str, list[BackendState]] = {}
        for st in [st for _, st in sorted(enumerate(states), key=rank)]:
            for public in st.backend.config.models:
                by_model.setdefault(public, []).append(st)
        # Per model, the operations every candidate implements: planning filters only when a call asks more.
        self._common_ops = {
            m: frozenset.intersection(*(frozenset(st.backend.operations) for st in sts))
            for m, sts in by_model.items()
        }
        self.by_model = by_model

    # --- ownership: start, close, add, remove -------------------------------------------------------
    async def start(self) -> None:
        """Start every backend (each returns quickly; slow loading goes on in the background) and its checks."""
        self._started = True
        for st in list(self.states.values()):
            await st.backend.start()
            self._watch(st)

    def _watch(self, st: BackendState) -> None:
        """Start a backend's background work: its health checks, and one look at the models it serves."""
        tasks = []
        if st.active_checks:
            tasks.append(asyncio.create_task(health_loop(st), name=f"health:{st.name}"))
        tasks.append(asyncio.create_task(_check_models(st), name=f"models:{st.name}"))
        self._tasks[st.name] = tasks

    async def close(self) -> None:
        """Stop the health checks, then close every backend (each close is attempted, errors logged)."""
        self._started = False
        tasks = [t for ts in self._tasks.values() for t in ts]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        for st in list(self.states.values()):
            try:
                await st.backend.close()
            except Exception:
                log.exception("backend %s failed to close", st.name)

    async def add(self, backend: Backend) -> None:
        """Add a backend while serving; it takes calls as soon as it is ready. Its name must be new."""
        if backend.name in self.states:
            raise ValueError(f"a backend named '{backend.name}' already exists")
        st = BackendState(backend)
        if self._started:
            await backend.start()
        self.states[backend.name] = st
        self._order.append(backend.name)
        self._rebuild()
        if self._started:
            self._watch(st)
        log.info("backend %s added (models: %s)", backend.name, ", ".join(backend.config.models))

    async def remove(self, name: str, *, drain_s: float = 30.0) -> None:
        """Stop routing to a backend, let its calls in flight finish (at most `drain_s`), then close it."""
        st = self.states.get(name)
        if st is None:
            raise KeyError(f"no backend named '{name}'")
        st.draining = True
        del self.states[name]
        self._order.remove(name)
        self._rebuild()
        tasks = self._tasks.pop(name, [])
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if st.in_flight:
            st.drained = asyncio.Event()
            try:
                async with asyncio.timeout(drain_s):
                    await st.drained.wait()
            except TimeoutError:
                pass
        if st.in_flight:
            log.warning(
                "backend %s removed with %d calls still in flight after %gs", name, st.in_flight, drain_s
            )
        try:
            await st.backend.close()
        except Exception:
            log.exception("backend %s failed to close", name)
        log.info("backend %s removed", name)

    @property
    def backends(self) -> list[Backend]:
        return [s.backend for s in self.states.values()]

    def models(self) -> list[str]:
        return list(self.by_model)

    def plan(self, call: Call) -> tuple[list[BackendState], list[Attempt]]:
        """Candidates in the order to try, and the ones skipped (as attempts that never ran)."""
        candidates = self.by_model.get(call.model)
        if candidates is None:
            raise ModelNotFoundError(
                f"The model '{call.model}' does not exist on this gateway. "
                f"Available models: {', '.join(self.models()) or '(none)'}.",
                param="model",
            )
        if call.endpoint not in self._common_ops[call.model]:
            candidates = [st for st in candidates if st.backend.implements(call.endpoint)]
            if not candidates:
                raise BadRequestError(
                    f"Model '{call.model}' does not support {call.endpoint}: no backend serving it implements "
                    "that operation.",
                    param="model",
                    code="operation_not_supported",
                )
        if call.forced is not None:
            st = self.states.get(call.forced)
            if st is None:
                raise BadRequestError(
                    f"X-Hybridgate-Backend names an unknown backend '{call.forced}'; "
                    f"known backends: {', '.join(self.states)}.",
                    param="X-Hybridgate-Backend",
                    code="unknown_backend",
                )
            if st not in candidates:
                raise BadRequestError(
                    f"Backend '{call.forced}' does not serve model '{call.model}'; "
                    f"it serves: {', '.join(st.backend.config.models)}.",
                    param="X-Hybridgate-Backend",
                    code="backend_does_not_serve_model",
                )
            return [st], []  # forced means forced: tried even when marked unhealthy
        order = list(candidates)
        if call.preferred is not None:
            st = self.states.get(call.preferred)
            if st is None:
                raise BadRequestError(
                    f"X-Hybridgate-Prefer names an unknown backend '{call.preferred}'; "
                    f"known backends: {', '.join(self.states)}.",
                    param="X-Hybridgate-Prefer",
                    code="unknown_backend",
                )
            if st in order:
                order.remove(st)
                order.insert(0, st)
        routable, skipped = [], []
        for st in order:
            if st.routable():
                routable.append(st)
            else:
                skipped.append(
                    Attempt(st.name, st.backend.config.models[call.model], error=st.why_not_routable())
                )
        return routable, skipped

    async def _wait_warming(
        self, call: Call, plan: list[BackendState], skipped: list[Attempt]
    ) -> tuple[list[BackendState], list[Attempt]]:
        """When nothing is routable yet something is on its way (a model loading, a pod warming), wait
        for it up to `warming_wait_s` instead of failing at once; the plan then."""
        if call.forced is not None:
            return plan, skipped
        coming = [st for st in self.by_model.get(call.model, ()) if st.lifecycle.coming]
        if not coming:
            return plan, skipped
        deadline = time.monotonic() + self.warming_wait_s
        while time.monotonic() < deadline:
            await asyncio.sleep(_WARM_POLL_S)
            plan, skipped = self.plan(call)
            if plan:
                return plan, skipped
            if not any(st.lifecycle.coming for st in self.by_model.get(call.model, ())):
                return plan, skipped  # what was warming failed or went away: say so now
        names = ", ".join(f"{st.name} ({st.lifecycle.value})" for st in coming)
        retry = max(1, round(min(self.warming_wait_s, 30.0)))
        raise UpstreamUnavailableError(
            f"Every backend for model '{call.model}' is still starting ({names}); waited "
            f"{self.warming_wait_s:g}s (server.warming_wait_s). Retry shortly.",
            code="backends_warming",
            headers={"Retry-After": str(retry)},
            extra={"attempts": [_attempt_json(a) for a in skipped]},
        )

    def _request(self, st: BackendState, call: Call) -> BackendRequest:
        body = dict(call.body)
        body["model"] = st.backend.config.models[call.model]
        return BackendRequest(call.endpoint, body, call.model, call.max_tokens)

    def _fail(self, call: Call, attempts: list[Attempt], refusal: GatewayError | None = None) -> GatewayError:
        if refusal is not None and not any(a.reached_backend for a in attempts):
            # Nothing reached a backend because policy refused every one: say why (e.g. over budget).
            return refusal
        lines = "; ".join(f"{a.backend}: {a.error}" for a in attempts) or "no backend serves it"
        if call.forced is not None:
            err = UpstreamUnavailableError(
                f"Forced backend '{call.forced}' failed: {lines}",
                status=502,
                code="forced_backend_failed",
                extra={"attempts": [_attempt_json(a) for a in attempts]},
            )
        else:
            err = UpstreamUnavailableError(
                f"All backends for model '{call.model}' failed: {lines}",
                headers={"Retry-After": str(self._retry_after(call))},
                extra={"attempts": [_attempt_json(a) for a in attempts]},
            )
        err.attempts = attempts
        return err

    def _retry_after(self, call: Call) -> int:
        """Seconds until a candidate may be tried again: the soonest cooldown end, at least 1."""
        now = time.monotonic()
        waits = [st.open_until - now for st in self.by_model.get(call.model, ()) if not st.healthy]
        soonest = min(waits, default=0.0)
        return max(1, min(60, math.ceil(soonest)))

    async def _finish(self, st: BackendState, call: Call, a: Attempt) -> None:
        a.cost_usd = self.pricer(st.backend.config, a)
        await call.hooks.after_attempt(st, a)

    async def _admit(
        self, st: BackendState, call: Call, req: BackendRequest, a: Attempt, attempts: list[Attempt]
    ) -> GatewayError | None:
        """Ask the call's policy (budget, limits) whether this backend may be tried; the refusal if not."""
        try:
            await call.hooks.before_attempt(st, req)
        except GatewayError as e:
            a.error, a.status = e.message, e.status
            attempts.append(a)
            return e
        return None

    async def _attempt(
        self,
        st: BackendState,
        call: Call,
        a: Attempt,
        attempts: list[Attempt],
        op: Callable[[], Awaitable[_T]],
        limit_s: float,
        waiting_for: str,
        cleanup: Callable[[], Awaitable[None]] | None = None,
    ) -> _T | None:
        """Run an attempt's first step under `limit_s`; None when it failed and the next backend should go.

        Every way it can fail is settled here once: recorded, charged (after_attempt), counted against the
        backend's health when that is fair, and re-raised only for the client's own errors and cancellation.
        """
        t0 = time.perf_counter()
        billed = False
        try:
            if st.backend.enforces_timeouts:
                return await op()
            # In-process adapters (mock, llamacpp) have no sockets to time out: bound them here.
            async with asyncio.timeout(limit_s):
                return await op()
        except TimeoutError:
            error, status, unhealthy = f"timed out waiting for {waiting_for} after {limit_s:g}s", None, True
            billed = True
        except StopAsyncIteration:
            error, status, unhealthy = "stream ended before its first chunk", None, True
        except BackendModelMissingError as e:
            # The config maps this model to a name the backend does not serve: the operator's mistake, not
            # the client's, and not the backend's health. Fall back; the reason shows in /health/backends.
            st.model_errors[call.model] = e.message
            error, status, unhealthy = (
                f"misconfigured: does not serve the model this gateway maps '{call.model}' to",
                e.status,
                False,
            )
        except BackendError as e:
            error, status, unhealthy = e.message, e.status, e.marks_unhealthy
            billed = getattr(e, "maybe_billed", False)
            if not e.retryable:
                if cleanup is not None:
                    await cleanup()
                a.duration_s, a.error, a.status = time.perf_counter() - t0, error, status
                attempts.append(a)
                await self._finish(st, call, a)
                raise ClientError(e, attempts) from None
        except asyncio.CancelledError:
            if cleanup is not None:
                await asyncio.shield(cleanup())
            a.duration_s, a.error = (
                time.perf_counter() - t0,
                "cancelled (client gone or server shutting down)",
            )
            attempts.append(a)
            # Shielded: the ledger row and the budget settlement must happen even while being cancelled.
            await asyncio.shield(self._finish(st, call, a))
            raise
        except Exception as e:
            # An adapter bug, most likely met by an unusual request (its encoding, a field the adapter did not
            # expect): not the backend's behaviour, so it never counts against the backend's health (no
            # request may take a backend away from other keys). Logged, and the next backend is tried.
            log.exception("backend %s raised unexpectedly", st.name)
            error, status, unhealthy = f"adapter error: {e!r}", None, False
        if cleanup is not None:
            await cleanup()
        a.duration_s, a.error, a.status = time.perf_counter() - t0, error, status
        if billed:
            # The backend may have generated (and will bill) what nobody received: record the most it could be.
            a.usage = _estimated_usage(call, None, 0)
            a.usage.completion_tokens = call.max_tokens or 0
        attempts.append(a)
        await self._finish(st, call, a)
        if unhealthy:
            st.record_failure(error)
        return None

    async def complete(self, call: Call) -> Result:
        """Run a non-streamed call with fallback. Raises GatewayError when nothing could answer."""
        return await self._run(call, self._complete_on)

    async def open_stream(self, call: Call) -> Stream:
        """Start a streamed call: fall back until one backend yields its first chunk."""
        return await self._run(call, self._open_on)

    async def _run(
        self,
        call: Call,
        on: Callable[[BackendState, Call, list[Attempt]], Awaitable[_R | GatewayError | None]],
    ) -> _R:
        """Try the plan in order; a backend at its concurrency cap is skipped for the next one, and only
        when every candidate was full or failed does the call queue for a slot on the full ones."""
        plan, attempts = self.plan(call)
        if not plan:
            self._demand(call)
            plan, attempts = await self._wait_warming(call, plan, attempts)
        refusal: GatewayError | None = None
        full: list[BackendState] = []  # at their cap on the first pass: queued for, in order, after it
        for st in itertools.chain(plan, _then(full)):
            queued = st in full
            if st.draining:  # removed after this call planned
                if not queued:
                    attempts.append(
                        Attempt(st.name, st.backend.config.models[call.model], error=st.why_not_routable())
                    )
                continue
            if queued:
                if not await self._queue(st, call, attempts):
                    continue
            elif st.gate is not None and not st.gate.try_acquire():
                full.append(st)  # busy is not unhealthy: skipped for now, queued for if all else fails
                attempts.append(
                    Attempt(st.name, st.backend.config.models[call.model], error=st.gate.describe())
                )
                self._demand(call, after=st)
                continue
            out = await on(st, call, attempts)
            if isinstance(out, GatewayError):
                refusal = refusal or out
            elif out is not None:
                return out
            else:
                self._demand(call, after=st)
        # Everything in the plan failed or was full: capacity started on demand (a cloud pod) is waited
        # for, up to warming_wait_s, rather than failing the call while it comes.
        if call.forced is None and self._demand(call):
            for st in await self._wait_new(call, {st.name for st in plan}):
                if st.draining or (st.gate is not None and not st.gate.try_acquire()):
                    continue
                out = await on(st, call, attempts)
                if isinstance(out, GatewayError):
                    refusal = refusal or out
                elif out is not None:
                    return out
        raise self._fail(call, attempts, refusal)

    def _demand(self, call: Call, after: BackendState | None = None) -> bool:
        """Tell the backends that start capacity on demand (the `pod` kind's `demand()`) that a call found
        no ready backend able to take it; True when some capacity is on its way.

        `after`: a candidate just failed or was full; only on-demand backends ranked between it and the
        next routable one are asked (a pod ranked below a ready hosted API is not started for it)."""
        coming = False
        candidates = self.by_model.get(call.model, [])
        start = candidates.index(after) + 1 if after is not None and after in candidates else 0
        for st in candidates[start:]:
            demand = getattr(st.backend, "demand", None)
            if demand is None:
                if after is not None and st.routable():
                    break  # a ready backend ranked above any further one will take the call
                continue
            if not st.draining and demand():
                coming = True
        return coming

    async def _wait_new(self, call: Call, tried: set[str]) -> list[BackendState]:
        """Routable candidates not in `tried`, waiting up to `warming_wait_s` while one is on its way."""
        deadline = time.monotonic() + self.warming_wait_s
        while True:
            plan, _ = self.plan(call)
            new = [st for st in plan if st.name not in tried]
            if new:
                return new
            others = [st for st in self.by_model.get(call.model, ()) if st.name not in tried]
            if not any(st.lifecycle.coming for st in others) or time.monotonic() >= deadline:
                return []
            await asyncio.sleep(_WARM_POLL_S)

    async def _queue(self, st: BackendState, call: Call, attempts: list[Attempt]) -> bool:
        """Wait for a slot on a full backend; False (and a skipped attempt saying why) when none came."""
        assert st.gate is not None
        c = st.backend.config.concurrency
        wait_s = c.queue_timeout_s if c is not None else st.backend.config.timeouts.first_byte_s
        try:
            await st.gate.acquire(wait_s)
            return True
        except QueueFull:
            why = f"{st.gate.describe()}; queue full"
        except TimeoutError:
            why = f"{st.gate.describe()}; no slot within {wait_s:g}s"
        attempts.append(Attempt(st.name, st.backend.config.models[call.model], error=why))
        return False

    def _release(self, st: BackendState) -> None:
        st.in_flight -= 1
        if st.gate is not None:
            st.gate.release()
        if st.draining and not st.in_flight and st.drained is not None:
            st.drained.set()

    async def _complete_on(
        self, st: BackendState, call: Call, attempts: list[Attempt]
    ) -> Result | GatewayError | None:
        """One non-streamed attempt on `st` (whose slot the caller took): the Result, a refusal, or None."""
        st.in_flight += 1
        try:
            req = self._request(st, call)
            a = Attempt(st.name, req.body["model"])
            if (refused := await self._admit(st, call, req, a, attempts)) is not None:
                return refused
            t0 = time.perf_counter()
            resp = await self._attempt(
                st,
                call,
                a,
                attempts,
                functools.partial(st.backend.complete, req),
                st.backend.config.timeouts.total_s,
                "the answer",
            )
            if resp is None:
                return None
            a.duration_s = time.perf_counter() - t0
            st.last_ok = st._clock()
            a.ok, a.status, a.usage = True, 200, resp.usage
            if resp.usage.estimated:
                a.usage = _estimated_usage(call, resp.body)
            st.record_success()
            if st.model_errors:
                st.model_errors.pop(call.model, None)
            await self._finish(st, call, a)
            attempts.append(a)
            resp.body["model"] = call.model
            return Result(resp.body, st.name, attempts)
        finally:
            self._release(st)

    async def _open_on(
        self, st: BackendState, call: Call, attempts: list[Attempt]
    ) -> Stream | GatewayError | None:
        """One streamed attempt on `st`, up to its first chunk; a Stream keeps the slot until settled."""
        st.in_flight += 1
        opened = False
        try:
            req = self._request(st, call)
            a = Attempt(st.name, req.body["model"], streamed=True)
            if (refused := await self._admit(st, call, req, a, attempts)) is not None:
                return refused
            t0 = time.perf_counter()
            it = st.backend.stream_batches(req).__aiter__()
            first = await self._attempt(
                st,
                call,
                a,
                attempts,
                it.__anext__,
                st.backend.config.timeouts.first_byte_s,
                "the first chunk",
                cleanup=functools.partial(_aclose, it),
            )
            if first is None:
                return None
            st.last_ok = st._clock()  # answering, however slowly its health probe is (busy_probes)
            attempts.append(a)
            opened = True
            return Stream(self, st, call, a, attempts, it, first, t0)
        finally:
            if not opened:
                self._release(st)


class ClientError(GatewayError):
    """A backend refused the request as the client's mistake (4xx other than 429): passed back as is."""

    def __init__(self, err: BackendError, attempts: list[Attempt]) -> None:
        super().__init__(err.message)
        self.status = err.status or 400
        self.upstream_body = err.body
        self.attempts = attempts
        self.type = "invalid_request_error"

    def body(self) -> dict[str, Any]:
        if isinstance(self.upstream_body, dict) and "error" in self.upstream_body:
            return self.upstream_body
        return super().body()


class Stream:
    """A stream whose first chunk has arrived: past this point there is no fallback.

    Iterating yields the backend's chunks; a failure raises BackendError, which the API turns into a
    terminal error event. Usage, duration and cost are settled exactly once, however the stream ends.
    """

    def __init__(
        self,
        manager: BackendManager,
        state: BackendState,
        call: Call,
        attempt: Attempt,
        attempts: list[Attempt],
        it: AsyncIterator[list[dict[str, Any]]],
        first: list[dict[str, Any]],
        t0: float,
    ) -> None:
        self._manager, self.state, self.call, self.attempt = manager, state, call, attempt
        self.attempts = attempts
        self._it, self._first, self._t0 = it, first, t0
        self._chars = 0
        self._settled = False

    @property
    def backend(self) -> str:
        return self.state.name

    def observe(self, batch: list[dict[str, Any]]) -> None:
        """Read one group's usage and text, for the attempt's accounting (see `take`). Called on every
        group of every stream: one loop, no call per chunk."""
        chars = 0
        for chunk in batch:
            u = chunk.get("usage")
            if u:
                usage = Usage.from_dict(u)
                if usage is not None:
                    self.attempt.usage = usage
            for ch in chunk.get("choices") or ():
                d = ch.get("delta")
                t = d.get("content") if isinstance(d, dict) else ch.get("text")
                if isinstance(t, str):
                    chars += len(t)
        if chars:
            self._chars += chars

    def take(self) -> tuple[list[dict[str, Any]], AsyncIterator[list[dict[str, Any]]]]:
        """The first group (observed) and the backend's own iterator of the rest, once.

        The caller reads the rest itself and passes each group to `observe` before using it: one async
        generator fewer per event than `batches()`, which the API's stream loop saves on every token.
        """
        batch, self._first = self._first, []
        self.observe(batch)
        return batch, self._it

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        async for batch in self.batches():
            for chunk in batch:
                yield chunk

    async def batches(self) -> AsyncIterator[list[dict[str, Any]]]:
        """The chunks in the groups the backend received them in (the API writes a group at once)."""
        # Nothing is held past its write: a stream idles between tokens far longer than it takes to write
        # one, so a group kept until the next read would be most of a long stream's resident memory.
        batch, it = self.take()
        yield batch
        async for batch in it:
            self.observe(batch)
            yield batch
            batch = None  # type: ignore[assignment]

    async def settle(self, error: BaseException | None = None, *, client_gone: bool = False) -> None:
        """Record the attempt's outcome; safe to call more than once."""
        if self._settled:
            return
        self._settled = True
        a = self.attempt
        a.duration_s = time.perf_counter() - self._t0
        if not a.usage.prompt_tokens and not a.usage.completion_tokens:
            a.usage = _estimated_usage(self.call, None, self._chars)
        if isinstance(error, BackendError):
            a.error, a.status = error.message, error.status
            self.state.record_failure(error.message)
        elif error is not None:
            a.error = f"{type(error).__name__}: {error}"
        elif client_gone:
            a.ok, a.status, a.error = True, 499, "client disconnected mid-stream"
        else:
            a.ok, a.status = True, 200
            self.state.last_ok = self.state._clock()
            self.state.record_success()
            if self.state.model_errors:
                self.state.model_errors.pop(self.call.model, None)
        try:
            await _aclose(self._it)
            await self._manager._finish(self.state, self.call, a)
        finally:
            self._manager._release(self.state)


def _then(items: list[BackendState]) -> Iterator[BackendState]:
    """The items of a list as they are once iteration reaches it (it may grow before then)."""
    yield from items


async def _check_models(st: BackendState) -> None:
    """Warn, naming the backend and what it does serve, about mapped models it does not list."""
    try:
        served = await st.backend.served_models()
    except Exception as e:  # a look at start must never take a backend down
        log.debug("backend %s: cannot list its models: %r", st.name, e)
        return
    if served is None:
        return
    missing = {pub: own for pub, own in st.backend.config.models.items() if own not in served}
    for pub, own in missing.items():
        st.model_errors[pub] = f"the config maps '{pub}' to '{own}', which the backend does not list"
    if missing:
        log.warning(
            "backend %s does not serve %s (config models: %s); it serves: %s",
            st.name,
            ", ".join(sorted(set(missing.values()))),
            ", ".join(f"{p} -> {o}" for p, o in missing.items()),
            ", ".join(served) or "(nothing)",
        )


def _estimated_usage(call: Call, body: dict[str, Any] | None, chars: int | None = None) -> Usage:
    if chars is None:
        chars = 0
        for ch in (body or {}).get("choices") or ():
            msg = ch.get("message")
            t = msg.get("content") if isinstance(msg, dict) else ch.get("text")
            chars += len(t) if isinstance(t, str) else 0
    return Usage(
        _estimate_tokens(len(prompt_text(call.body, call.endpoint))), _estimate_tokens(chars), estimated=True
    )


async def _aclose(it: Any) -> None:
    aclose = getattr(it, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:  # closing a broken generator must not mask the original outcome
            pass


def _attempt_json(a: Attempt) -> dict[str, Any]:
    return {
        "backend": a.backend,
        "ok": a.ok,
        "status": a.status,
        "error": a.error,
        "duration_s": round(a.duration_s, 4),
    }
