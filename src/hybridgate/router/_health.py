"""Per-backend health: passive failure counting, a circuit breaker with cooldown, and active checks."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from hybridgate._capacity import Capacity
from hybridgate.backends import Backend, BackendError, BackendTimeoutError, Lifecycle

log = logging.getLogger("hybridgate.health")


@dataclass
class BackendState:
    """What the router knows about one backend. In memory, per process: it only speeds routing up."""

    backend: Backend
    healthy: bool = True
    consecutive_failures: int = 0
    last_error: str | None = None
    last_check: float | None = None  # wall-clock time of the last active check
    last_latency_ms: float | None = None
    open_until: float = 0.0  # monotonic time before which an unhealthy backend is not tried
    # Set when the router is removing this backend: no new calls, the ones in flight finish.
    draining: bool = False
    # Calls running on it now (a stream counts until it is settled).
    in_flight: int = 0
    # Set when the last call in flight of a draining backend ends.
    drained: asyncio.Event | None = None
    # The concurrency cap, when the config sets one.
    gate: Capacity | None = None
    # Public model -> why the backend would not serve it ("model not found": the config maps it wrong).
    model_errors: dict[str, str] = field(default_factory=dict)
    # Monotonic time a real call last got an answer or its stream's first chunk from this backend: a probe
    # that times out while calls keep succeeding says the backend is busy, not dead (see probe_timed_out).
    last_ok: float = float("-inf")
    # Probe timeouts not counted against health because calls were succeeding meanwhile.
    busy_probes: int = 0
    _clock: Any = field(default=time.monotonic, repr=False)

    def __post_init__(self) -> None:
        c = self.backend.config.concurrency
        if c is not None and self.gate is None:
            self.gate = Capacity(c.max, c.queue)

    @property
    def name(self) -> str:
        return self.backend.name

    @property
    def active_checks(self) -> bool:
        """Whether a background task probes this backend (else only real calls tell its health)."""
        h = self.backend.config.health
        if not h.enabled or h.mode == "passive":
            return False
        return h.mode == "active" or self.backend.free_health_checks

    @property
    def lifecycle(self) -> Lifecycle:
        return Lifecycle.DRAINING if self.draining else self.backend.lifecycle

    def routable(self) -> bool:
        """Ready and healthy, or unhealthy with its cooldown over (half-open: one more try is allowed)."""
        if not self.backend.ready or self.draining:
            return False
        return self.healthy or self._clock() >= self.open_until

    def why_not_routable(self) -> str:
        if self.draining:
            return "draining (being removed)"
        if not self.backend.ready:
            return f"{self.backend.state} (not ready yet)"
        left = max(0.0, self.open_until - self._clock())
        return f"unhealthy, skipped for {left:.1f}s more (last error: {self.last_error})"

    def record_success(self, latency_ms: float | None = None) -> None:
        if not self.healthy:
            log.info("backend %s is healthy again", self.name)
        self.healthy = True
        self.consecutive_failures = 0
        if latency_ms is not None:
            self.last_latency_ms = latency_ms

    def record_failure(self, error: str) -> None:
        cfg = self.backend.config.health
        self.consecutive_failures += 1
        self.last_error = error
        if self.consecutive_failures >= cfg.failures_to_trip:
            if self.healthy:
                log.warning(
                    "backend %s marked unhealthy after %d consecutive failures: %s",
                    self.name,
                    self.consecutive_failures,
                    error,
                )
            self.healthy = False
            self.open_until = self._clock() + cfg.cooldown_s

    def probe_timed_out(self, error: str, started: float) -> bool:
        """A health probe that began at `started` (monotonic) timed out; True when it counts as a failure.

        Under heavy load a probe queues behind thousands of streams and misses its deadline while the backend
        answers every real call: benching it then turns a busy backend into a dead one. So a timeout counts
        only when no real call succeeded from one probe interval before the probe began until now (calls
        failing too, or none in flight); else it is noted (last_error says so) and the backend stays in.
        """
        self.last_check = time.time()
        window = started - self.backend.config.health.interval_s
        if self.healthy and self.last_ok >= window:
            self.busy_probes += 1
            self.last_error = f"{error} (not counted: calls to it are succeeding, busy)"
            return False
        self.record_failure(error)
        return True

    def snapshot(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.backend.kind,
            "lifecycle": self.lifecycle.value,
            "state": self.backend.state,
            # A backend that failed to start is routable (a call fails fast, saying why), never healthy.
            "healthy": self.healthy and self.backend.ready and self.lifecycle is not Lifecycle.FAILED,
            "routable": self.routable(),
            "consecutive_failures": self.consecutive_failures,
            "last_error": self.last_error,
            "last_check": self.last_check,
            "last_latency_ms": self.last_latency_ms,
            "priority": self.backend.config.priority,
            "models": list(self.backend.config.models),
            "operations": sorted(self.backend.operations),
            "health_checks": "active" if self.active_checks else "passive",
            "in_flight": self.in_flight,
            "busy_probes": self.busy_probes,
            "concurrency": (
                None
                if self.gate is None
                else {"max": self.gate.limit, "queue": self.gate.queue, "waiting": self.gate.waiting}
            ),
            "model_errors": dict(self.model_errors),
        }


async def check_once(state: BackendState) -> bool:
    """Run one active health check and record its outcome."""
    t0 = time.perf_counter()
    started = state._clock()
    try:
        await state.backend.check_health()
    except BackendTimeoutError as e:
        state.probe_timed_out(f"health check: {e.message}", started)
        return False
    except BackendError as e:
        state.last_check = time.time()
        state.record_failure(f"health check: {e.message}")
        return False
    except Exception as e:  # a broken adapter must not kill the health loop
        state.last_check = time.time()
        state.record_failure(f"health check crashed: {e!r}")
        return False
    state.last_check = time.time()
    latency = (time.perf_counter() - t0) * 1000
    if state.healthy or time.monotonic() >= state.open_until:
        state.record_success(latency)
    else:
        # Passing during cooldown: remember it, but keep the circuit open until the cooldown ends.
        state.consecutive_failures = 0
        state.last_latency_ms = latency
    return True


async def health_loop(state: BackendState) -> None:
    """Check one backend forever at its configured interval (cancelled by the app's lifespan)."""
    cfg = state.backend.config.health
    if not state.active_checks:
        return  # passive: health comes from real calls only
    while True:
        if state.backend.ready:
            started = state._clock()
            try:
                async with asyncio.timeout(cfg.timeout_s + 1):
                    await check_once(state)
            except TimeoutError:
                state.probe_timed_out(f"health check timed out after {cfg.timeout_s:g}s", started)
        await asyncio.sleep(
            cfg.interval_s if state.healthy else min(cfg.interval_s, max(cfg.cooldown_s, 0.5))
        )
