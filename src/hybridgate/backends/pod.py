"""The `pod` kind: a pool of cloud GPU pods that start, scale and stop themselves, routed as one backend.

The router sees one backend; inside it, each pod is a replica whose model server is an `openai` backend on
the pod's endpoint. A replica's life is `stopped -> provisioning -> warming -> ready -> draining ->
stopped` (each transition timestamped); the pool's lifecycle is its best replica's, so a request for a
model whose pods are starting waits for them (`server.warming_wait_s`) like for any warming backend.

- **Auto-start:** the router calls `demand()` when a call found no ready backend able to take it; a pool
  with nothing running or coming launches (or resumes) a replica at once.
- **Readiness** only when the served model answers: it is listed at `/v1/models` and a one-token
  completion succeeds. A pod that is not ready within `ready_timeout_s` is terminated (billing stops).
- **Scaling** (`cloud/_autoscale.py`): fast up, slow down, pending replicas counted; idle for
  `idle_stop_s` -> down to `min_replicas` (stop, resumable; or terminate).
- **Balancing:** least outstanding requests across ready replicas, `replica_concurrency` each.
- **Costs:** a ledger row per replica per billed segment (from provisioning start to stop, idle
  included, and every `cost_flush_s` while up, so a crash loses at most that much), in GPU-seconds and
  USD at `price_per_hour` (else the provider's `costPerHr`).
- **A crashed gateway** leaves pods named `hg-<backend>-...`: at start the pool adopts its own pods of
  that name (running ones become replicas again, stopped ones resumable). RunPod has no provider-side
  autostop (see README "Cloud GPU pods" for its dead-man bound); SkyPilot clusters carry a dead-man
  autostop the pool re-arms (`Provider.heartbeat`).
- **Spot** (`spot: true`): a pod the provider took back is failed, terminated and replaced; idle spot
  pods are terminated, never stopped.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from hybridgate.backends._base import (
    Backend,
    BackendError,
    BackendRequest,
    BackendResponse,
    BackendTimeoutError,
    BackendUnavailableError,
    Lifecycle,
)
from hybridgate.cloud import (
    CloudError,
    CloudResumeError,
    PodInfo,
    PodSpec,
    PodStatus,
    Provider,
    make_provider,
)
from hybridgate.cloud._autoscale import ScalePolicy, Scaler
from hybridgate.cloud._lease import Lease
from hybridgate.config import BackendConfig, HealthConfig
from hybridgate.protocol import Endpoint

log = logging.getLogger("hybridgate.pods")


class SkyPilotOptions(BaseModel):
    """`options.skypilot` of a pod backend whose provider is skypilot (see cloud/skypilot.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # The Python of the environment with skypilot==0.14.1 (default: HYBRIDGATE_SKYPILOT_PYTHON, ./.venv-sky).
    python: str | None = None
    # The SkyPilot API server (default: SKYPILOT_API_SERVER_ENDPOINT, then ~/.sky/config.yaml).
    api_server: str | None = None
    # Where to launch: "aws", "gcp/us-central1", "azure", ... (default: any cloud the server has enabled).
    infra: str | None = None
    spot: Literal["spot_then_on_demand", "spot", "on_demand"] = "spot_then_on_demand"
    cpus: str | None = None
    memory: str | None = None
    disk_size: int | None = Field(None, ge=1)
    # The model server's command; $MODEL, $PORT and $HYBRIDGATE_REPLICA_API_KEY are set for it.
    run: str = Field(
        'vllm serve "$MODEL" --host 0.0.0.0 --port "$PORT" --api-key "$HYBRIDGATE_REPLICA_API_KEY"',
        min_length=1,
    )
    setup: str | None = None
    # The dead-man switch: SkyPilot autostop (wait_for none) after this many minutes without a heartbeat
    # from the gateway; down (default) or stop.
    deadman_minutes: int = Field(60, ge=1, le=10_080)
    deadman_down: bool = True
    call_timeout_s: float = Field(300.0, gt=0)

    def settings(self) -> Any:
        from hybridgate.cloud.skypilot import SkyPilotSettings

        return SkyPilotSettings(
            python=self.python,
            api_server=self.api_server,
            infra=self.infra,
            spot=self.spot,
            cpus=self.cpus,
            memory=self.memory,
            disk_size=self.disk_size,
            run=self.run,
            setup=self.setup,
            deadman_minutes=self.deadman_minutes,
            deadman_down=self.deadman_down,
            call_timeout_s=self.call_timeout_s,
        )


class PodOptions(BaseModel):
    """`options` of a pod backend."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: Literal["runpod", "skypilot"] = "runpod"
    # The provider's API base URL (default: its public API; RUNPOD_API_BASE_URL also works). RunPod only.
    provider_url: str | None = None
    # GPU types tried in order (RunPod type ids; SkyPilot accelerator names such as T4, L4, A10G; empty
    # with skypilot: a CPU-only instance).
    gpu_types: list[str] = Field(default_factory=list, validate_default=True)
    data_centers: list[str] = Field(default_factory=list)
    cloud_type: Literal["SECURE", "COMMUNITY", "ALL"] = "SECURE"
    gpu_count: int = Field(1, ge=1, le=16)
    # The container image (RunPod: required; SkyPilot: optional, run as docker:<image>).
    image: str = Field("", validate_default=True)
    skypilot: SkyPilotOptions | None = None
    docker_args: str = ""
    env: dict[str, str] = Field(default_factory=dict)
    port: int = Field(8000, ge=1, le=65535)
    container_disk_gb: int = Field(20, ge=1)
    # Bearer key of the model server on the pod (not the provider's key, which is the backend's api_key).
    replica_api_key: str | None = None
    min_replicas: int = Field(0, ge=0)
    max_replicas: int = Field(1, ge=1, le=64)
    target_in_flight: int = Field(4, ge=1)
    replica_concurrency: int | None = Field(None, ge=1)
    idle_stop_s: float = Field(300.0, ge=0)
    idle_action: Literal["stop", "terminate"] = "stop"
    # Interruptible (spot) pods: cheaper; the provider may take one back at any time. An interrupted pod is
    # treated as failed (terminated, billed to the moment it was seen gone) and the scaler replaces it;
    # spot pods are terminated, never stopped (idle_action is ignored). bid_per_gpu: USD per hour per
    # GPU; default the GPU type's current minimum bid.
    spot: bool = False
    bid_per_gpu: float | None = Field(None, gt=0)
    down_delay_s: float = Field(120.0, ge=0)
    ready_timeout_s: float = Field(900.0, gt=0)
    drain_s: float = Field(30.0, ge=0)
    poll_s: float = Field(5.0, gt=0)
    cost_flush_s: float = Field(60.0, gt=0)
    price_per_hour: float | None = Field(None, ge=0)
    # On gateway shutdown: stop the pods (default; nothing left billing) or leave them for the next start.
    stop_on_shutdown: bool = True
    # Seconds to wait after a failed launch before trying again.
    retry_s: float = Field(30.0, ge=0)
    # How long a call waits for a slot when every ready pod is at replica_concurrency.
    queue_s: float = Field(30.0, ge=0)
    # Several gateway processes: a lease not renewed for this long (its holder crashed) is taken over.
    lease_ttl_s: float = Field(15.0, gt=0)

    @field_validator("gpu_types", "image")
    @classmethod
    def _runpod_needs(cls, value: Any, info: ValidationInfo) -> Any:
        if info.data.get("provider", "runpod") == "runpod" and not (
            value.strip() if isinstance(value, str) else value
        ):
            what = "at least one GPU type" if info.field_name == "gpu_types" else "the container image"
            raise PydanticCustomError(
                "missing", "Field required ({what} with provider runpod)", {"what": what}
            )
        return value

    @model_validator(mode="after")
    def _bounds(self) -> PodOptions:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas})"
            )
        if self.provider == "runpod":
            if self.skypilot is not None:
                raise ValueError("skypilot: only with provider skypilot")
        else:
            if self.data_centers:
                raise ValueError(
                    "data_centers: RunPod only; with provider skypilot say where in skypilot.infra "
                    "(e.g. 'aws/us-east-1')"
                )
            if self.provider_url is not None:
                raise ValueError("provider_url: RunPod only; with provider skypilot use skypilot.api_server")
            if self.spot or self.bid_per_gpu is not None:
                raise ValueError(
                    "spot, bid_per_gpu: RunPod only; with provider skypilot use skypilot.spot "
                    "(spot_then_on_demand, spot or on_demand)"
                )
        return self


class Replica:
    """One pod of the pool and the openai backend on its endpoint once it has one."""

    def __init__(self, pool: PodBackend, pod_id: str | None, name: str) -> None:
        self.pool = pool
        self.pod_id = pod_id
        self.name = name
        self.lifecycle = Lifecycle.STOPPED
        self.transitions: list[tuple[float, str, str]] = []
        self.backend: Backend | None = None
        self.endpoint: str | None = None
        self.in_flight = 0
        self.health_failures = 0  # failed health probes in a row
        self.last_ok = -math.inf  # pool clock of the last call it answered
        self.busy_s = 0.0
        self._busy_since: float | None = None
        self.up_s = 0.0  # seconds billed (closed segments)
        self.segment_start: float | None = None  # monotonic start of the open billing segment
        self.phase_since = pool.clock()
        self.cost_per_hr = 0.0
        self.gpu: str | None = None
        self.last_error: str | None = None
        self.task: asyncio.Task[None] | None = None
        self.drained = asyncio.Event()  # set when the last call in flight ends

    def set(self, state: Lifecycle, note: str = "") -> None:
        if state is self.lifecycle and not note:
            return
        self.lifecycle = state
        self.phase_since = self.pool.clock()
        self.transitions.append((time.time(), state.value, note))
        del self.transitions[:-50]
        log.info("pod %s (%s) %s%s", self.name, self.pod_id or "-", state.value, f": {note}" if note else "")

    def acquire(self) -> None:
        if self.in_flight == 0:
            self._busy_since = self.pool.clock()
        self.in_flight += 1
        self.pool.last_active = self.pool.clock()

    def release(self) -> None:
        self.in_flight -= 1
        self.pool.last_active = self.pool.clock()
        if self.in_flight == 0 and self._busy_since is not None:
            self.busy_s += self.pool.clock() - self._busy_since
            self._busy_since = None
        if self.in_flight == 0:
            self.drained.set()
        self.pool._changed.set()

    def billed_s(self) -> float:
        open_s = self.pool.clock() - self.segment_start if self.segment_start is not None else 0.0
        return self.up_s + open_s

    def utilisation(self) -> float | None:
        up = self.billed_s()
        busy = self.busy_s + (self.pool.clock() - self._busy_since if self._busy_since is not None else 0.0)
        return round(min(1.0, busy / up), 4) if up > 0 else None

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.pod_id,
            "name": self.name,
            "backend": self.pool.name,
            "lifecycle": self.lifecycle.value,
            "endpoint": self.endpoint,
            "gpu": self.gpu,
            "in_flight": self.in_flight,
            "cost_per_hr": self.cost_per_hr,
            "billed_s": round(self.billed_s(), 3),
            "utilisation": self.utilisation(),
            "last_error": self.last_error,
            "transitions": [{"at": t, "state": s, "note": n} for t, s, n in self.transitions],
        }


CostSink = Callable[[dict[str, Any]], None]


class PodBackend(Backend):
    """A pool of cloud pods serving the backend's models, started, scaled and stopped by the gateway."""

    enforces_timeouts = True  # each replica is an openai backend, which does
    Options = PodOptions
    free_health_checks = True

    def __init__(self, config: BackendConfig, *, provider: Provider | None = None) -> None:
        super().__init__(config)
        o: PodOptions = self.options
        if config.price.per_hour:
            raise ValueError(
                f"backend '{config.name}' (kind pod): set options.price_per_hour, not price.per_hour: pod time "
                "is billed as its own ledger rows from provisioning to stop, not prorated per request"
            )
        self.clock: Callable[[], float] = time.monotonic
        self._provider = provider
        self.replicas: list[Replica] = []
        self.policy = ScalePolicy(
            o.min_replicas, o.max_replicas, o.target_in_flight, o.down_delay_s, o.idle_stop_s
        )
        self.scaler = Scaler(self.policy, self.clock())
        self.last_active = self.clock()
        self.last_error: str | None = None
        self.events: list[tuple[float, str]] = []
        self.cost_sink: CostSink | None = None
        self._waiting = 0  # demand() calls from the router since the last decision
        # When each recent demand() came: while no replica is ready, the calls that asked wait in the router
        # (up to its bound, about queue_s) and are counted as waiting for that long, not only until the next
        # decision (a burst during a cold start asks for what it needs at once). Cleared when one is ready.
        self._asked: collections.deque[float] = collections.deque()
        self._queued = 0  # calls inside the pool waiting now for a slot on a ready replica (a level)
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()  # a replica became ready or finished a call
        self._loop_task: asyncio.Task[None] | None = None
        self._retry_after = 0.0
        self._seq = itertools.count(1)
        self._prefix = f"hg-{config.name}-"[:40]
        self._model = next(iter(config.models.values()))
        self._closing = False
        # Several gateway processes: only the holder of the pool's lease decides (attach_store).
        self.lease: Lease | None = None
        self._owner = True
        self._requested_until = 0.0  # a follower asked the owner for capacity: "coming" until then
        self._seen_wanted = 0.0
        self._journal_engine: Callable[[], Any] | None = None
        self._heartbeats: dict[str, float] = {}  # pod id -> when its provider heartbeat last went out
        self._beating: set[asyncio.Task[None]] = set()
        # The model server's key. SkyPilot opens the port publicly, so it always has one: configured
        # (so a restarted gateway can talk to the clusters it adopts) or random per process.
        self.replica_key: str | None = o.replica_api_key or (
            secrets.token_urlsafe(24) if o.provider == "skypilot" else None
        )

    def attach_store(self, engine: Callable[[], Any]) -> None:
        """Share the pool's decisions with other gateway processes through the database's lease row."""
        o: PodOptions = self.options
        self.lease = Lease(engine, self.name, secrets.token_hex(8), ttl_s=max(o.lease_ttl_s, 2 * o.poll_s))
        self._owner = False  # until the first tick says otherwise
        self._journal_engine = engine
        if self._provider is not None:
            self._attach_journal(self._provider)

    def _attach_journal(self, provider: Provider) -> None:
        """A provider whose requests outlive a call (SkyPilot) records their ids in the database."""
        if hasattr(provider, "journal") and self._journal_engine is not None:
            from hybridgate.cloud.skypilot import RequestJournal

            provider.journal = RequestJournal(self._journal_engine)

    @property
    def owner(self) -> bool:
        return self._owner

    # --- what the router sees -------------------------------------------------------------------
    @property
    def provider(self) -> Provider:
        if self._provider is None:
            o: PodOptions = self.options
            settings = None
            if o.provider == "skypilot":
                settings = (o.skypilot or SkyPilotOptions()).settings()
            self._provider = make_provider(
                o.provider, self.config.api_key, base_url=o.provider_url, port=o.port, settings=settings
            )
            if self._journal_engine is not None:
                self._attach_journal(self._provider)
        return self._provider

    @property
    def ready(self) -> bool:
        return any(r.lifecycle is Lifecycle.READY for r in self.replicas)

    @property
    def lifecycle(self) -> Lifecycle:
        states = {r.lifecycle for r in self.replicas}
        for s in (Lifecycle.READY, Lifecycle.WARMING, Lifecycle.PROVISIONING, Lifecycle.DRAINING):
            if s in states:
                return s
        if self._requested_until > self.clock():
            return Lifecycle.PROVISIONING  # asked of the owning process, which is starting it
        return Lifecycle.STOPPED

    @property
    def state(self) -> str:
        counts: dict[str, int] = {}
        for r in self.replicas:
            counts[r.lifecycle.value] = counts.get(r.lifecycle.value, 0) + 1
        inner = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no pods"
        if self.last_error and not self.ready:
            inner += (
                f"; last error: {self.last_error[:300]}"  # shown in a 503's attempts and /health/backends
            )
        return f"{self.lifecycle.value} ({inner})"

    def demand(self) -> bool:
        """A call found no ready backend able to take it. Start capacity if none is coming; True when
        some is on its way (the router then waits for it, up to server.warming_wait_s)."""
        self._waiting += 1
        self._asked.append(self.clock())
        return self._ask()

    def _ask(self) -> bool:
        """demand() without counting a call: for calls already counted in `_queued`."""
        self.last_active = self.clock()
        if self._closing:
            return False
        self._wake.set()
        if any(r.lifecycle.coming for r in self.replicas):
            return True
        if not self._can_launch():
            return False
        if not self._owner:
            # Another process decides: it hears of this through the lease row on our next tick.
            assert self.lease is not None
            self._requested_until = self.clock() + 2 * self.lease.ttl_s
            return True
        # At once, not on the controller's next tick: the caller is about to wait for what is coming.
        self._launch("a request found no ready backend able to take it")
        return True

    def _can_launch(self) -> bool:
        active = sum(1 for r in self.replicas if r.lifecycle not in (Lifecycle.STOPPED, Lifecycle.FAILED))
        return active < self.policy.max_replicas and self.clock() >= self._retry_after

    def describe(self) -> dict[str, Any]:
        """The pool for /health/backends and /v1/pods."""
        o: PodOptions = self.options
        return {
            "provider": o.provider,
            "min_replicas": o.min_replicas,
            "max_replicas": o.max_replicas,
            "idle_stop_s": o.idle_stop_s,
            # This process launches, stops and bills the pool's pods (with several processes on one
            # database, only the holder of the pool's lease does).
            "decides": self._owner,
            "last_error": self.last_error,
            "replicas": [r.describe() for r in self.replicas],
            "events": [{"at": t, "event": e} for t, e in self.events[-20:]],
        }

    # --- life ---------------------------------------------------------------------------------------
    async def start(self) -> None:
        self._closing = False
        self._loop_task = asyncio.create_task(self._run(), name=f"pods:{self.name}")

    async def close(self) -> None:
        self._closing = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._loop_task
        tasks = [r.task for r in self.replicas if r.task is not None and not r.task.done()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        o: PodOptions = self.options
        if o.stop_on_shutdown and self._owner:
            await asyncio.gather(
                *(
                    self._retire(r, terminate=self._terminates, why="gateway shutting down")
                    for r in self.replicas
                    if r.pod_id and r.lifecycle is not Lifecycle.STOPPED
                ),
                return_exceptions=True,
            )
        else:
            for r in self.replicas:
                self._bill(r, close=True)
        for r in self.replicas:
            await self._drop_backend(r)
        if self.lease is not None and self._owner:
            with contextlib.suppress(Exception):
                await self.lease.release()
        if self._provider is not None:
            await self._provider.close()

    def _event(self, text: str) -> None:
        self.events.append((time.time(), text))
        del self.events[:-100]
        log.info("pods %s: %s", self.name, text)

    async def _run(self) -> None:
        with contextlib.suppress(CloudError):
            await self._adopt()
        while not self._closing:
            try:
                await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the controller must survive anything a provider does
                log.exception("pods %s: controller step failed", self.name)
                self.last_error = f"controller: {e!r}"
            self._wake.clear()
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation that arrives as
            # the event is set (demand() just before close()), and close() then waited for ever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.options.poll_s):
                    await self._wake.wait()

    async def _adopt(self) -> None:
        """Pods of this pool left by an earlier gateway (a crash, stop_on_shutdown false): take them back."""
        for info in await self.provider.list():
            if not info.name.startswith(self._prefix) or info.status is PodStatus.TERMINATED:
                continue
            # A pod this gateway launched meanwhile (its name is known before its id) is not an orphan.
            if any(info.id == r.pod_id or info.name == r.name for r in self.replicas):
                continue
            r = Replica(self, info.id, info.name)
            r.cost_per_hr, r.gpu = info.cost_per_hr, info.gpu
            self.replicas.append(r)
            if info.status is PodStatus.RUNNING:
                if self.lease is None:
                    r.segment_start = self.clock()  # with a lease, the owner bills (_tick)
                r.set(Lifecycle.PROVISIONING, "adopted a running pod left by an earlier gateway")
                r.task = asyncio.create_task(self._bring_up(r, None))
            else:
                r.set(Lifecycle.STOPPED, "adopted a stopped pod left by an earlier gateway")
            self._event(f"adopted pod {info.id} ({info.status.value})")

    async def _tick(self) -> None:
        o: PodOptions = self.options
        now = self.clock()
        if self.lease is not None and not await self._lease_tick(now):
            return  # a follower: the owner decides
        for r in self.replicas:
            if r.segment_start is not None and now - r.segment_start >= o.cost_flush_s:
                self._bill(r, close=False)
        self._beat(now)
        if o.spot:
            await self._interrupted()
        ready = [r for r in self.replicas if r.lifecycle is Lifecycle.READY]
        pending = [r for r in self.replicas if r.lifecycle.coming]
        waiting = self._waiting_now(now, bool(ready))
        d = self.scaler.decide(
            now,
            ready=len(ready),
            pending=len(pending),
            in_flight=sum(r.in_flight for r in ready),
            waiting=waiting,
            last_active=self.last_active,
        )
        have = len(ready) + len(pending)
        if d.desired > have:
            for _ in range(d.desired - have):
                if not self._can_launch():
                    break
                self._launch(d.reason)
        elif d.desired < len(ready) + len(pending) and ready:
            # The least busy ready replicas go first (they drain fastest).
            for r in sorted(ready, key=lambda r: r.in_flight)[: have - d.desired]:
                r.set(Lifecycle.DRAINING, d.reason)
                r.task = asyncio.create_task(self._drain(r, d.reason))

    def _beat(self, now: float) -> None:
        """Tell the provider the gateway still uses each running pod (re-arms its dead-man timer)."""
        every = self.provider.heartbeat_s
        if every is None:
            return
        for r in self.replicas:
            if r.pod_id is None or r.lifecycle not in (Lifecycle.WARMING, Lifecycle.READY):
                continue
            last = self._heartbeats.setdefault(r.pod_id, now)  # launch/start armed it just now
            if now - last >= every:
                self._heartbeats[r.pod_id] = now
                t = asyncio.create_task(self._heartbeat(r.pod_id), name=f"pods:{self.name}:heartbeat")
                self._beating.add(t)
                t.add_done_callback(self._beating.discard)

    async def _heartbeat(self, pod_id: str) -> None:
        try:
            await self.provider.heartbeat(pod_id)
        except CloudError as e:
            self._event(f"re-arming the provider's dead-man timer of pod {pod_id} failed: {e.message}")

    def _waiting_now(self, now: float, any_ready: bool) -> int:
        """Calls waiting for this pool now: the ones queued in it for a slot, plus the router's demand()
        calls since the last decision, or, while no replica is ready, the ones of the last queue_s."""
        o: PodOptions = self.options
        while self._asked and (any_ready or self._asked[0] < now - o.queue_s):
            self._asked.popleft()
        waiting = self._queued + max(self._waiting, len(self._asked))
        self._waiting = 0
        return waiting

    async def _interrupted(self) -> None:
        """Spot pods the provider took back (no longer running): failed, terminated, and replaced by the
        scaler at once (no retry_s wait: nothing is wrong with the launch itself)."""
        up = [r for r in self.replicas if r.pod_id and r.lifecycle in (Lifecycle.READY, Lifecycle.WARMING)]
        if not up:
            return
        try:
            pods = {i.id: i for i in await self.provider.list()}
        except CloudError as e:
            self._event(f"checking for interrupted spot pods failed: {e.message}")
            return
        for r in up:
            info = pods.get(r.pod_id or "")
            if info is not None and info.status not in (PodStatus.STOPPED, PodStatus.TERMINATED):
                continue  # running (or a state not known here: not taken for an interruption)
            why = "spot pod interrupted by the provider (its GPU was taken back)"
            self._event(f"pod {r.pod_id}: {why}; replacing it")
            self.last_error = r.last_error = why
            r.set(Lifecycle.FAILED, why)
            if r.task is not None and not r.task.done():
                r.task.cancel()
            await self._drop_backend(r)
            with contextlib.suppress(CloudError):
                await self.provider.terminate(r.pod_id or "")
            self._bill(r, close=True)
            self.replicas.remove(r)

    async def _lease_tick(self, now: float) -> bool:
        """Renew or take the lease; True when this process decides. A follower follows the provider's
        list and leaves its demand and activity in the lease row."""
        assert self.lease is not None
        try:
            owner = await self.lease.acquire()
        except Exception as e:  # the database is not open yet, or down: decide nothing (no double launch)
            self.last_error = f"pod lease: {type(e).__name__}: {e}"
            self._owner = False
            return False
        if owner and not self._owner:
            self._event("this process now owns the pool's decisions (lease)")
            for r in self.replicas:  # pods followed until now are billed from here by their new owner
                if r.pod_id and r.lifecycle is not Lifecycle.STOPPED and r.segment_start is None:
                    r.segment_start = now
        self._owner = owner
        if owner:
            if self.lease.wanted_at > self._seen_wanted:
                self._seen_wanted = self.lease.wanted_at
                self._waiting += 1
            if self.lease.active_at:
                self.last_active = max(self.last_active, now - max(0.0, time.time() - self.lease.active_at))
            return True
        waiting = self._waiting_now(now, any(r.lifecycle is Lifecycle.READY for r in self.replicas))
        busy = any(r.in_flight for r in self.replicas) or now - self.last_active < self.options.poll_s * 2
        await self.lease.signal(wanted=waiting > 0, active=busy)
        await self._follow()
        return False

    async def _follow(self) -> None:
        """As a follower: the owner's running pods become replicas here; ones it stopped leave."""
        running = {i.id: i for i in await self.provider.list() if i.name.startswith(self._prefix)}
        for r in list(self.replicas):
            info = running.get(r.pod_id or "")
            if (
                info is None or info.status is not PodStatus.RUNNING
            ) and r.lifecycle is not Lifecycle.STOPPED:
                if r.task is not None and not r.task.done():
                    r.task.cancel()
                await self._drop_backend(r)
                r.set(Lifecycle.STOPPED, "stopped by the owning process")
        for info in running.values():
            if info.status is PodStatus.RUNNING and not any(
                r.pod_id == info.id and r.lifecycle is not Lifecycle.STOPPED for r in self.replicas
            ):
                r = self.find(info.id) or Replica(self, info.id, info.name)
                if r not in self.replicas:
                    self.replicas.append(r)
                r.set(Lifecycle.PROVISIONING, "started by the owning process")
                r.task = asyncio.create_task(self._bring_up(r, None))

    # --- transitions --------------------------------------------------------------------------------
    def _launch(self, reason: str) -> Replica:
        stopped = next((r for r in self.replicas if r.lifecycle is Lifecycle.STOPPED and r.pod_id), None)
        if self.options.spot:
            stopped = None  # a stopped spot pod was interrupted: a new one, not a resume
        if stopped is not None:
            r = stopped
        else:
            r = Replica(self, None, f"{self._prefix}{secrets.token_hex(3)}{next(self._seq)}")
            self.replicas.append(r)
        r.segment_start = self.clock()
        r.last_error = None
        r.set(Lifecycle.PROVISIONING, reason)
        r.task = asyncio.create_task(self._bring_up(r, reason))
        return r

    def _spec(self, name: str) -> PodSpec:
        o: PodOptions = self.options
        env = dict(o.env)
        env.setdefault("MODEL", self._model)
        return PodSpec(
            secrets={"HYBRIDGATE_REPLICA_API_KEY": self.replica_key} if self.replica_key else {},
            name=name,
            image=o.image,
            gpu_types=tuple(o.gpu_types),
            data_centers=tuple(o.data_centers) or (None,),
            gpu_count=o.gpu_count,
            cloud_type=o.cloud_type,
            port=o.port,
            docker_args=o.docker_args,
            env=env,
            container_disk_gb=o.container_disk_gb,
            spot=o.spot,
            bid_per_gpu=o.bid_per_gpu,
        )

    async def _bring_up(self, r: Replica, reason: str | None) -> None:
        """provisioning -> warming -> ready, or back to nothing with the reason kept."""
        o: PodOptions = self.options
        deadline = self.clock() + o.ready_timeout_s
        try:
            info: PodInfo | None = None
            if r.pod_id is not None and reason is not None:
                try:
                    info = await self.provider.start(r.pod_id, o.gpu_count)
                    self._event(f"resumed pod {r.pod_id}")
                except CloudResumeError as e:
                    self._event(
                        f"resume of pod {r.pod_id} failed ({e.message}): terminating it and creating a new one"
                    )
                    r.set(Lifecycle.PROVISIONING, f"resume failed ({e.message}); terminated, re-creating")
                    with contextlib.suppress(CloudError):
                        await self.provider.terminate(r.pod_id)
                    r.pod_id = None
            if r.pod_id is None:
                notes: list[str] = []
                info = await self.provider.launch(self._spec(r.name), notes=notes)
                for n in notes:
                    self._event(n)
                r.pod_id = info.id
                self._event(f"created pod {info.id} ({info.gpu or 'GPU'}, ${info.cost_per_hr:g}/h)")
            while True:
                assert r.pod_id is not None
                info = await self.provider.status(r.pod_id)
                if info is None or info.status is PodStatus.TERMINATED:
                    raise CloudError(f"pod {r.pod_id} disappeared while starting")
                if o.spot and info.status is PodStatus.STOPPED:
                    raise CloudError(f"spot pod {r.pod_id} was interrupted by the provider while starting")
                r.cost_per_hr, r.gpu = info.cost_per_hr or r.cost_per_hr, info.gpu or r.gpu
                if info.endpoint:
                    if r.backend is None or r.endpoint != info.endpoint:
                        await self._drop_backend(r)
                        r.endpoint = info.endpoint
                        r.backend = self._replica_backend(r, info.endpoint)
                        await r.backend.start()
                        r.set(Lifecycle.WARMING, f"container up at {info.endpoint}; waiting for the model")
                    if await self._answers(r):
                        r.set(Lifecycle.READY, "the model answers")
                        r.health_failures, r.last_ok = 0, self.clock()
                        self.last_active = self.clock()  # idle_stop_s counts from here at the earliest
                        self.last_error = None
                        self._wake.set()
                        self._changed.set()
                        return
                if self.clock() >= deadline:
                    raise CloudError(f"not ready within ready_timeout_s ({o.ready_timeout_s:g}s)")
                await asyncio.sleep(min(o.poll_s, 1.0) if r.lifecycle is Lifecycle.WARMING else o.poll_s)
        except asyncio.CancelledError:
            raise
        except CloudError as e:
            await self._failed(r, e.message)
        except Exception as e:
            log.exception("pods %s: bringing up %s failed", self.name, r.name)
            await self._failed(r, repr(e))

    async def _failed(self, r: Replica, why: str) -> None:
        o: PodOptions = self.options
        self.last_error = r.last_error = why
        self._retry_after = self.clock() + o.retry_s
        self._event(f"pod {r.pod_id or r.name} failed to start: {why}")
        r.set(Lifecycle.FAILED, why)
        await self._drop_backend(r)
        if r.pod_id is not None and self._owner:
            try:
                await self.provider.terminate(r.pod_id)
            except CloudError as e:
                self._event(f"terminating pod {r.pod_id} failed: {e.message}")
        self._bill(r, close=True)
        if r in self.replicas:
            self.replicas.remove(r)

    async def _answers(self, r: Replica) -> bool:
        """Ready only when the served model answers: listed, and a one-token completion succeeds."""
        assert r.backend is not None
        try:
            served = await r.backend.served_models()
            if served is not None and self._model not in served:
                return False
            body = {"model": self._model, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
            await r.backend.complete(BackendRequest(Endpoint.CHAT, body, next(iter(self.config.models)), 1))
        except BackendError:
            return False
        return True

    def _replica_backend(self, r: Replica, endpoint: str) -> Backend:
        from hybridgate.backends.openai_http import OpenAIBackend

        cfg = BackendConfig(
            name=f"{self.name}.{r.pod_id}",
            kind="openai",
            base_url=endpoint,
            api_key=self.replica_key,
            models=dict(self.config.models),
            timeouts=self.config.timeouts,
            health=HealthConfig(path=self.config.health.path, timeout_s=self.config.health.timeout_s),
            options={"check_models": True},
        )
        return OpenAIBackend(cfg)

    async def _drop_backend(self, r: Replica) -> None:
        b, r.backend = r.backend, None
        if b is not None:
            with contextlib.suppress(Exception):
                await b.close()

    async def _drain(self, r: Replica, why: str) -> None:
        await self._drain_then(r, self._terminates, why)

    @property
    def _terminates(self) -> bool:
        """Scaling down terminates (spot pods always; else idle_action terminate) rather than stops."""
        o: PodOptions = self.options
        return o.spot or o.idle_action == "terminate"

    async def _retire(self, r: Replica, *, terminate: bool, why: str) -> None:
        """Stop (resumable) or terminate a replica's pod, and bill its segment."""
        if r.lifecycle is not Lifecycle.DRAINING:
            r.set(Lifecycle.DRAINING, why)
        await self._drop_backend(r)
        if r.pod_id is None or not self._owner:  # no pod yet, or the owning process stops it
            self._bill(r, close=True)
            r.set(Lifecycle.STOPPED, why)
            if r in self.replicas:
                self.replicas.remove(r)
            return
        try:
            if terminate:
                await self.provider.terminate(r.pod_id)
            else:
                await self.provider.stop(r.pod_id)
        except CloudError as e:
            self.last_error = r.last_error = f"stopping pod {r.pod_id}: {e.message}"
            self._event(self.last_error)
            r.set(Lifecycle.FAILED, e.message)
            return  # still billing as far as we know: the next tick retries via the scaler
        self._bill(r, close=True)
        r.endpoint = None
        self._event(f"{'terminated' if terminate else 'stopped'} pod {r.pod_id}: {why}")
        r.set(Lifecycle.STOPPED, why)
        if terminate and r in self.replicas:
            self.replicas.remove(r)

    def _bill(self, r: Replica, *, close: bool) -> None:
        """Write the open billing segment as a ledger row (and start a new one unless closing)."""
        if r.segment_start is None:
            return
        now = self.clock()
        seconds = max(0.0, now - r.segment_start)
        r.up_s += seconds
        r.segment_start = None if close else now
        o: PodOptions = self.options
        per_hour = o.price_per_hour if o.price_per_hour is not None else r.cost_per_hr
        cost = seconds * per_hour / 3600.0
        if self.cost_sink is None or seconds <= 0:
            return
        wall = time.time()
        self.cost_sink(
            {
                "ts": wall,
                "day": time.strftime("%Y-%m-%d", time.gmtime(wall)),
                "request_id": f"pod:{r.pod_id or r.name}:{int(wall * 1000)}"[:64],
                "key_id": None,
                "key_name": f"(pod) {self.name}",
                "model": next(iter(self.config.models)),
                "backend": self.name,
                "backend_model": (r.pod_id or r.name)[:200],
                "input_tokens": 0,
                "output_tokens": 0,
                "estimated": False,
                "duration_s": seconds,
                "status": None,
                "ok": True,
                "streamed": False,
                "error": None,
                "cost_usd": cost,
                "operation": "pod_uptime",
                "images": 0,
                "gpu_seconds": seconds * o.gpu_count,
                "training_tokens": 0,
            }
        )

    # --- operator actions (the pods API) ---------------------------------------------------------
    def find(self, pod_id: str) -> Replica | None:
        return next((r for r in self.replicas if r.pod_id == pod_id), None)

    def start_one(self, reason: str = "started by the operator") -> Replica:
        """Launch (or resume) one more replica now. ValueError when max_replicas are already up."""
        if not self._can_launch():
            o: PodOptions = self.options
            raise ValueError(
                f"backend '{self.name}' already has max_replicas ({o.max_replicas}) pods up or coming"
                + (
                    f", or its last launch failed ({self.last_error}) and it waits retry_s"
                    if self.last_error
                    else ""
                )
            )
        return self._launch(reason)

    def stop_one(self, r: Replica, *, terminate: bool, reason: str) -> None:
        """Drain a replica, then stop (resumable) or terminate its pod, in the background."""
        if r.lifecycle is Lifecycle.STOPPED and not terminate:
            raise ValueError(f"pod {r.pod_id} is already stopped")
        if r.task is not None and not r.task.done() and r.lifecycle is not Lifecycle.DRAINING:
            r.task.cancel()  # a bring-up in progress
        if r.lifecycle is Lifecycle.STOPPED:
            r.set(Lifecycle.DRAINING, reason)
            r.task = asyncio.create_task(self._retire(r, terminate=True, why=reason))
            return
        r.set(Lifecycle.DRAINING, reason)
        r.task = asyncio.create_task(self._drain_then(r, terminate, reason))

    async def _drain_then(self, r: Replica, terminate: bool, why: str) -> None:
        o: PodOptions = self.options
        if r.in_flight:
            r.drained.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(o.drain_s):  # not wait_for: see _run
                    await r.drained.wait()
        await self._retire(r, terminate=terminate, why=why)

    def resume_one(self, r: Replica) -> None:
        if r.lifecycle is not Lifecycle.STOPPED:
            raise ValueError(f"pod {r.pod_id} is {r.lifecycle.value}, not stopped")
        r.segment_start = self.clock()
        r.set(Lifecycle.PROVISIONING, "resumed by the operator")
        r.task = asyncio.create_task(self._bring_up(r, "resumed by the operator"))

    # --- calls --------------------------------------------------------------------------------------
    def _free(self) -> Replica | None:
        """The ready replica with the fewest requests outstanding, under its concurrency cap."""
        o: PodOptions = self.options
        best: Replica | None = None
        for r in self.replicas:
            if r.lifecycle is not Lifecycle.READY or r.backend is None:
                continue
            if o.replica_concurrency is not None and r.in_flight >= o.replica_concurrency:
                continue
            if best is None or r.in_flight < best.in_flight:
                best = r
        return best

    async def _pick(self) -> Replica:
        """A replica for one call (least outstanding requests). When every ready one is at its cap, more
        are asked for and the call waits for a slot, up to `queue_s`."""
        r = self._free()
        if r is not None:
            return r
        o: PodOptions = self.options
        deadline = self.clock() + o.queue_s
        # Counted as waiting for as long as it waits, not once per retry: a decision taken between two
        # retries must still see it (else a replica is drained while calls queue for one).
        self._queued += 1
        try:
            while True:
                coming = self._ask()
                ready = sum(1 for x in self.replicas if x.lifecycle is Lifecycle.READY)
                left = deadline - self.clock()
                if (not ready and not coming) or left <= 0:
                    raise BackendUnavailableError(
                        f"all {ready} ready pods are at replica_concurrency ({o.replica_concurrency})"
                        if ready
                        else "no pod is ready"
                    )
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(left, 1.0)):  # not wait_for: see _run
                        await self._changed.wait()
                r = self._free()
                if r is not None:
                    return r
        finally:
            self._queued -= 1

    async def complete(self, req: BackendRequest) -> BackendResponse:
        r = await self._pick()
        assert r.backend is not None
        r.acquire()
        try:
            res = await r.backend.complete(req)
            r.last_ok = self.clock()
            return res
        finally:
            r.release()

    async def stream(self, req: BackendRequest) -> AsyncIterator[dict[str, Any]]:
        async for batch in self.stream_batches(req):
            for chunk in batch:
                yield chunk

    async def stream_batches(self, req: BackendRequest) -> AsyncIterator[list[dict[str, Any]]]:
        r = await self._pick()
        assert r.backend is not None
        r.acquire()
        try:
            async for batch in r.backend.stream_batches(req):
                r.last_ok = self.clock()
                yield batch
        finally:
            r.release()

    async def served_models(self) -> list[str] | None:
        return None  # the pods come and go; each replica is checked before it is ready

    async def check_health(self) -> None:
        """Each ready replica's model server; one that fails `health.failures_to_trip` probes in a row is
        terminated and replaced by the scaler. A probe that times out while the replica is answering
        calls (one in flight, or one answered within a probe interval) is not counted: busy, not dead."""
        ready = [r for r in self.replicas if r.lifecycle is Lifecycle.READY and r.backend is not None]
        h = self.config.health
        errors = []
        for r in ready:
            assert r.backend is not None
            started = self.clock()
            try:
                await r.backend.check_health()
            except BackendError as e:
                if isinstance(e, BackendTimeoutError) and (
                    r.in_flight or r.last_ok >= started - h.interval_s
                ):
                    r.last_error = f"{e.message} (not counted: calls to it are succeeding, busy)"
                    continue
                r.health_failures += 1
                r.last_error = e.message
                errors.append(f"{r.pod_id}: {e.message}")
                if r.health_failures >= h.failures_to_trip and r.lifecycle is Lifecycle.READY:
                    why = f"unhealthy ({r.health_failures} failed health checks in a row): {e.message}"
                    r.set(Lifecycle.DRAINING, why)
                    r.task = asyncio.create_task(self._retire(r, terminate=True, why=why))
            else:
                r.health_failures = 0
        if ready and len(errors) == len(ready):
            raise BackendError("every ready pod failed its health check: " + "; ".join(errors))

    def expected_cost(self, seconds: float) -> float:
        o: PodOptions = self.options
        return math.fsum(seconds * (o.price_per_hour or r.cost_per_hr) / 3600 for r in self.replicas)


__all__ = ["PodBackend", "PodOptions", "Replica"]
