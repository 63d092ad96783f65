"""The durable jobs engine: leased rows in the project's database, run by in-process workers.

Why our own leased rows and not an engine from a package (measured in shared/research/job-engines.md): the
one candidate with step checkpoints and SQLite (dbos) left a killed process's jobs PENDING, holding every
per-key slot, until a private function or a hosted service recovered them; the queue libraries lose a task
on kill -9 or have no SQLite mode. A leased row does all of it in our own tables:

- A worker **claims** a job with a compare-and-set UPDATE (`lease_expires` in the past -> ours); works the
  same on SQLite and PostgreSQL, and two processes can never both win.
- A **heartbeat** renews the lease every lease_s/3; every checkpoint is an UPDATE that also requires
  `lease_owner = me`, so a worker that lost its lease can no longer write (LeaseLost stops it).
- A job dies with its process and comes back when its lease runs out: expiry is the only way a job changes
  hands (no "reset running jobs at startup": wrong with several processes).
- **Steps** (submit -> wait -> mirror -> record -> done) are checkpointed; a restarted job resumes at its
  step. The provider's request id is written in the same UPDATE that leaves the submit step, and
  `submit_sent_at` is written before the submit is sent: a job found with the second and not the first
  crashed in the few milliseconds of the submit itself, and is failed (`submit_outcome_unknown`) rather
  than sent again. Nothing is ever submitted twice.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import ValidationError
from sqlalchemy import and_, func, insert, or_, select, text, tuple_, update
from sqlalchemy.exc import IntegrityError

from hybridgate.backends import BackendConnectError, BackendError, BackendHTTPError
from hybridgate.backends._generation import (
    GenerationBackend,
    ResultGoneError,
    SubmitOutcomeUnknownError,
    Submitted,
)
from hybridgate.jobs import _lora
from hybridgate.jobs._models import INPUTS, OPERATIONS, TERMINAL, JobCreate
from hybridgate.ledger import price_usage
from hybridgate.protocol import (
    BadRequestError,
    BudgetExceededError,
    GatewayError,
    NotFoundError,
    PermissionDeniedError,
    Usage,
)
from hybridgate.router import Call
from hybridgate.storage import StorageError
from hybridgate.store import api_keys, job_events, jobs, ledger, lora_versions, webhook_deliveries

if TYPE_CHECKING:
    from hybridgate.auth import Principal
    from hybridgate.config import BackendConfig, JobsConfig, PriceConfig
    from hybridgate.ledger import Ledger
    from hybridgate.router import BackendManager
    from hybridgate.storage import Signer, Storage
    from hybridgate.store import Store

log = logging.getLogger("hybridgate.jobs")

_MAX_LOGS = 200
_GRACE_S = 300.0


class LeaseLost(Exception):
    """This worker no longer holds the job (its lease ran out and another took it, or it ended)."""


class _Fail(Exception):
    """End the job as failed with this code and message (not retried)."""

    def __init__(self, code: str, message: str, *, cost: float | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.cost = code, message, cost


class _Retry(Exception):
    """A step failed in a way worth trying again later (with backoff), up to jobs.max_attempts."""


def _j(v: Any) -> str:
    return orjson.dumps(v).decode()


def _l(v: str | None, default: Any = None) -> Any:
    return orjson.loads(v) if v else default


def _prices_job(price: PriceConfig, job_type: str) -> bool:
    """Whether `price` says what a job of this type costs (a trainer priced only per image does not)."""
    if price.per_request or price.per_gpu_hour or price.per_hour:
        return True
    if job_type == "image_generation":
        return bool(price.per_image)
    if job_type == "lora_training":
        return bool(price.per_step)
    return False


def new_job_id() -> str:
    return "job_" + secrets.token_hex(12)


@dataclass
class _Running:
    task: asyncio.Task[None]
    wake: asyncio.Event


class JobEngine:
    """Accepts jobs (API side) and runs them (worker side) for one gateway process."""

    def __init__(
        self,
        store: Store,
        manager: BackendManager,
        ledger_: Ledger,
        storage: Storage,
        signer: Callable[[], Signer],
        config: JobsConfig,
    ) -> None:
        self.store = store
        self.manager = manager
        self.ledger = ledger_
        self.storage = storage
        self._signer = signer
        self.config = config
        self.owner = f"{socket.gethostname()[:30]}:{os.getpid()}:{secrets.token_hex(4)}"
        self._running: dict[str, _Running] = {}
        self._reservations: dict[str, int] = {}  # job id -> this process's budget-book reservation
        self._loop_task: asyncio.Task[None] | None = None
        self._hooks_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self.http_client: Any = None  # httpx.AsyncClient for outgoing webhooks, made at start

    # --- lifespan -------------------------------------------------------------------------------
    async def start(self) -> None:
        import httpx

        self.http_client = httpx.AsyncClient(timeout=httpx.Timeout(10.0), follow_redirects=False)
        await self._restore_reservations()
        self._loop_task = asyncio.create_task(self._claim_loop(), name="jobs:claim")
        self._hooks_task = asyncio.create_task(self._webhook_loop(), name="jobs:webhooks")

    async def stop(self) -> None:
        """Stop claiming, stop the running jobs and hand their leases back at once (they resume elsewhere
        or at the next start, at their step)."""
        self._stopping = True
        self._wake.set()
        for t in (self._loop_task, self._hooks_task):
            if t is not None:
                t.cancel()
        running = list(self._running.values())
        for r in running:
            r.task.cancel()
        await asyncio.gather(
            *(t for t in (self._loop_task, self._hooks_task) if t is not None),
            *(r.task for r in running),
            return_exceptions=True,
        )
        with contextlib.suppress(Exception):
            async with self.store.engine.begin() as conn:
                await conn.execute(
                    update(jobs)
                    .where(jobs.c.lease_owner == self.owner)
                    .values(lease_owner=None, lease_expires=None)
                )
        if self.http_client is not None:
            await self.http_client.aclose()

    async def _restore_reservations(self) -> None:
        """Jobs not yet ended keep their reserved cost against their key's budget after a restart."""
        async with self.store.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(jobs.c.id, jobs.c.key_id, jobs.c.cost_reserved).where(
                        jobs.c.status.in_(("queued", "running")), jobs.c.key_id.is_not(None)
                    )
                )
            ).all()
        for r in rows:
            rid = self.ledger.book.try_reserve(
                r.key_id, float("inf"), float(r.cost_reserved), self.config.time_bound_s + _GRACE_S
            )
            if rid is not None:
                self._reservations[r.id] = rid

    # --- accepting jobs -------------------------------------------------------------------------
    def candidates(self, model: str, operation: str) -> list[BackendConfig]:
        """The generation backends that may run `operation` for `model` (validates both, clearly)."""
        plan_all = self.manager.by_model.get(model)
        if plan_all is None:
            gen = sorted(
                {
                    m
                    for st in self.manager.states.values()
                    if isinstance(st.backend, GenerationBackend)
                    for m in st.backend.config.models
                }
            )
            raise NotFoundError(
                f"The model '{model}' does not exist on this gateway. Generation models: "
                f"{', '.join(gen) or '(none configured: add a fal or comfyui backend)'}.",
                param="model",
                code="model_not_found",
            )
        found = [
            st.backend.config
            for st in plan_all
            if isinstance(st.backend, GenerationBackend) and st.backend.implements(operation)
        ]
        if not found:
            raise BadRequestError(
                f"Model '{model}' does not support {operation}: no generation backend serving it does.",
                param="model",
                code="operation_not_supported",
            )
        return found

    def worst_case(
        self, backends: list[BackendConfig], job_type: str, job_input: dict[str, Any], model: str
    ) -> float:
        """The most the job can cost on any of its candidate backends (reserved before it is accepted):
        per image x n, per training step x steps, per GPU-hour (and per hour) x jobs.time_bound_s, plus
        the request."""
        n = int(job_input.get("n", 1)) if job_type == "image_generation" else 0
        steps = int(job_input.get("steps", 0)) if job_type == "lora_training" else 0
        bound = self.config.time_bound_s
        worst = 0.0
        for b in backends:
            price = b.price_for(b.models[model])
            u = Usage(
                images=n,
                gpu_seconds=bound if price.per_gpu_hour else 0.0,
                requests=1,
                training_steps=steps,
            )
            worst = max(worst, price_usage(price, u, bound if price.per_hour else 0.0))
        return worst

    async def create(self, p: Principal, body: JobCreate, idempotency_key: str | None) -> dict[str, Any]:
        op = OPERATIONS[body.type]
        try:
            parsed = INPUTS[body.type].model_validate(body.input)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(x) for x in err["loc"])
            param = "input" + (f".{where}" if where else "")
            raise BadRequestError(f"Invalid value for '{param}': {err['msg']}.", param=param) from None
        job_input = parsed.model_dump(exclude_none=True)
        if p.allowed_models and body.model not in p.allowed_models:
            raise PermissionDeniedError(
                f"API key '{p.name}' may not use model '{body.model}'.", param="model"
            )
        backends = self.candidates(body.model, op)
        if body.type == "image_generation" and job_input.get("loras"):
            if not self.config.public_url:
                raise BadRequestError(
                    "Using a LoRA needs jobs.public_url in the gateway's config: the provider downloads the "
                    "weights from this gateway.",
                    param="input.loras",
                    code="public_url_required",
                )
            job_input["loras"] = await self._resolve_loras(p, job_input["loras"])
        idem = None
        if idempotency_key is not None:
            if not 1 <= len(idempotency_key) <= 255:
                raise BadRequestError("Idempotency-Key must be 1 to 255 characters.", param="Idempotency-Key")
            idem = f"{p.key_id or '-'}:{idempotency_key}"
            existing = await self._by_idempotency(idem)
            if existing is not None:
                return self._same_or_conflict(existing, body, job_input)
        cost = self.worst_case(backends, body.type, job_input, body.model)
        job_id = new_job_id()
        rid = self._reserve(p, backends, cost, job_id, body.model, body.type)
        now = time.time()
        row = {
            "id": job_id,
            "key_id": p.key_id,
            "key_name": p.name,
            "type": body.type,
            "model": body.model,
            "status": "queued",
            "step": "submit",
            "input": _j(job_input),
            "idempotency": idem,
            "cost_reserved": cost,
            "next_run_at": now,
            "webhook_url": body.webhook_url,
            "metadata": _j(body.metadata) if body.metadata is not None else None,
            "created_at": now,
            "updated_at": now,
        }
        try:
            async with self.store.engine.begin() as conn:
                await conn.execute(insert(jobs).values(**row))
                await conn.execute(
                    insert(job_events).values(
                        job_id=job_id, ts=now, type="queued", data=_j({"status": "queued"})
                    )
                )
        except IntegrityError:
            self._release(job_id, rid)
            existing = await self._by_idempotency(idem) if idem else None
            if existing is None:
                raise
            return self._same_or_conflict(existing, body, job_input)
        except BaseException:
            self._release(job_id, rid)
            raise
        self._wake.set()
        return await self.get(p, job_id)

    def _reserve(
        self,
        p: Principal,
        backends: list[BackendConfig],
        cost: float,
        job_id: str,
        model: str,
        job_type: str,
    ) -> int | None:
        if p.key_id is None or p.budget_usd is None:
            return None
        prices = [(b.name, b.price_for(b.models[model])) for b in backends]
        unpriced = [name for name, price in prices if not price.free and not _prices_job(price, job_type)]
        if unpriced:
            unit = {"image_generation": "per_image, ", "lora_training": "per_step, "}.get(job_type, "")
            raise PermissionDeniedError(
                f"Backend(s) {', '.join(unpriced)} have no price for {job_type} in the configuration "
                f"({unit}per_request, per_gpu_hour or per_hour), so what this job costs is unknown; API key "
                f"'{p.name}' has a budget and may only use priced backends or ones marked "
                "`price: {free: true}`.",
                param="model",
                code="unknown_cost",
            )
        rid = self.ledger.book.try_reserve(p.key_id, p.budget_usd, cost, self.config.time_bound_s + _GRACE_S)
        if rid is None:
            spent = self.ledger.book.spent.get(p.key_id, 0.0)
            held = self.ledger.book.in_flight(p.key_id)
            raise BudgetExceededError(
                f"API key '{p.name}' has spent ${spent:.6f} of its ${p.budget_usd:.6f} budget"
                + (f" (and ${held:.6f} is reserved by calls and jobs in flight)" if held else "")
                + f"; this job could cost up to ${cost:.6f}. Raise the key's budget, or ask for fewer outputs."
            )
        self._reservations[job_id] = rid
        return rid

    def _release(self, job_id: str, rid: int | None, key_id: str | None = None, cost: float = 0.0) -> None:
        self._reservations.pop(job_id, None)
        self.ledger.book.settle(key_id, rid, cost)

    async def _by_idempotency(self, idem: str | None) -> Any:
        async with self.store.engine.connect() as conn:
            return (await conn.execute(select(jobs).where(jobs.c.idempotency == idem))).first()

    def _same_or_conflict(self, row: Any, body: JobCreate, job_input: dict[str, Any]) -> dict[str, Any]:
        if row.type != body.type or row.model != body.model or _l(row.input) != job_input:
            raise _Conflict(
                "This Idempotency-Key was already used for a different job request; use a new key for a "
                "new job.",
                param="Idempotency-Key",
            )
        return self.render(row)

    async def _resolve_loras(self, p: Principal, refs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Each LoRA reference -> the caller's own stored version (weights key and trigger word)."""
        owner = p.key_id or "-"
        out = []
        async with self.store.engine.connect() as conn:
            for i, ref in enumerate(refs):
                q = select(lora_versions).where(
                    lora_versions.c.owner == owner, lora_versions.c.name == ref["name"]
                )
                if ref.get("version") is not None:
                    q = q.where(lora_versions.c.version == ref["version"])
                row = (await conn.execute(q.order_by(lora_versions.c.version.desc()).limit(1))).first()
                if row is None:
                    which = f" version {ref['version']}" if ref.get("version") else ""
                    raise BadRequestError(
                        f"No LoRA '{ref['name']}'{which} for this key; see GET /v1/loras.",
                        param=f"input.loras[{i}].name",
                        code="lora_not_found",
                    )
                out.append(
                    {
                        "name": row.name,
                        "version": row.version,
                        "scale": ref.get("scale", 1.0),
                        "weights_key": row.weights_key,
                        "trigger_word": row.trigger_word,
                    }
                )
        return out

    # --- reading --------------------------------------------------------------------------------
    async def _row(self, job_id: str) -> Any:
        async with self.store.engine.connect() as conn:
            return (await conn.execute(select(jobs).where(jobs.c.id == job_id))).first()

    async def get(self, p: Principal, job_id: str) -> dict[str, Any]:
        return self.render(await self._visible(p, job_id))

    async def _visible(self, p: Principal, job_id: str) -> Any:
        row = await self._row(job_id) if len(job_id) <= 40 else None
        if row is None or not self._may_see(p, row):
            raise NotFoundError(f"No job '{job_id}' for this key.", param="job_id")
        return row

    @staticmethod
    def _may_see(p: Principal, row: Any) -> bool:
        return (
            p.is_master
            or (p.key_id is None and not p.is_master and row.key_id is None)
            or (p.key_id is not None and row.key_id == p.key_id)
        )

    @property
    def signer(self) -> Signer:
        return self._signer()

    def webhook_secret(self, job_id: str) -> str:
        raw = hmac.new(self.signer.derive("webhooks"), f"webhook:{job_id}".encode(), hashlib.sha256).digest()
        return "whsec_" + base64.b64encode(raw).decode()

    def render(self, row: Any) -> dict[str, Any]:
        provider = _l(row.provider, {})
        artifacts = []
        for a in _l(row.artifacts, []):
            artifacts.append(
                {
                    **{k: a[k] for k in ("role", "key", "content_type", "size", "sha256")},
                    "url": self.link(a["key"]),
                }
            )
        return {
            "id": row.id,
            "object": "job",
            "type": row.type,
            "model": row.model,
            "status": row.status,
            "step": row.step,
            "input": _l(row.input, {}),
            "backend": row.backend,
            "provider_request_id": row.provider_request_id,
            "progress": row.progress,
            "queue_position": provider.get("queue_position"),
            "logs": _l(row.logs, []),
            "artifacts": artifacts,
            "result": _l(row.result),
            "error": _l(row.error),
            "cost_reserved_usd": row.cost_reserved,
            "cost_usd": row.cost_usd,
            "attempts": row.attempts,
            "webhook_url": row.webhook_url,
            "webhook_secret": self.webhook_secret(row.id) if row.webhook_url else None,
            "metadata": _l(row.metadata),
            "created_at": row.created_at,
            "started_at": row.started_at,
            "finished_at": row.finished_at,
        }

    def link(self, key: str) -> str:
        base = self.config.public_url or ""
        return base + self.signer.path(key)

    async def list_jobs(
        self, p: Principal, *, status: str | None, type_: str | None, limit: int, after: str | None
    ) -> dict[str, Any]:
        q = select(jobs)
        if not p.is_master:
            q = q.where(jobs.c.key_id == p.key_id if p.key_id is not None else jobs.c.key_id.is_(None))
        if status:
            q = q.where(jobs.c.status == status)
        if type_:
            q = q.where(jobs.c.type == type_)
        async with self.store.engine.connect() as conn:
            if after:
                cursor = (
                    await conn.execute(select(jobs.c.created_at, jobs.c.id).where(jobs.c.id == after))
                ).first()
                if cursor is None:
                    raise BadRequestError(f"after: no job '{after}'.", param="after")
                q = q.where(
                    or_(
                        jobs.c.created_at < cursor.created_at,
                        and_(jobs.c.created_at == cursor.created_at, jobs.c.id < cursor.id),
                    )
                )
            rows = (
                await conn.execute(q.order_by(jobs.c.created_at.desc(), jobs.c.id.desc()).limit(limit + 1))
            ).all()
        more = len(rows) > limit
        rows = rows[:limit]
        return {
            "object": "list",
            "data": [self.render(r) for r in rows],
            "has_more": more,
            "next_after": rows[-1].id if more else None,
        }

    async def wait_for(self, job_id: str, wait_s: float) -> Any:
        """The job's row once it has ended, or as it is after `wait_s` seconds (polls the database, so it
        sees jobs run by any process)."""
        deadline = time.monotonic() + wait_s
        delay = 0.05
        while True:
            row = await self._row(job_id)
            if row.status in TERMINAL or time.monotonic() >= deadline:
                return row
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 1.5, 0.5)

    @staticmethod
    def artifact_list(row: Any) -> list[dict[str, Any]]:
        return list(_l(row.artifacts, []))

    async def events(self, job_id: str, after: int) -> Any:
        async with self.store.engine.connect() as conn:
            return (
                await conn.execute(
                    select(job_events)
                    .where(job_events.c.job_id == job_id, job_events.c.id > after)
                    .order_by(job_events.c.id)
                    .limit(500)
                )
            ).all()

    async def event_stream(self, p: Principal, job_id: str, after: int) -> AsyncIterator[bytes]:
        """Server-sent events: every event after `after` (Last-Event-ID), then new ones until the job ends."""
        await self._visible(p, job_id)
        deadline = time.monotonic() + self.config.time_bound_s + _GRACE_S
        quiet = 0.0
        yield b"retry: 1000\n\n"
        while time.monotonic() < deadline:
            rows = await self.events(job_id, after)
            for r in rows:
                after = r.id
                yield f"id: {r.id}\nevent: {r.type}\ndata: {r.data}\n\n".encode()
                if r.type in TERMINAL:
                    return
            if not rows:
                quiet += 0.25
                if quiet >= 15:
                    quiet = 0.0
                    yield b": keep-alive\n\n"
                await asyncio.sleep(0.25)

    # --- LoRA versions --------------------------------------------------------------------------
    def _lora_version(self, r: Any) -> dict[str, Any]:
        return {
            "name": r.name,
            "version": r.version,
            "owner": r.key_id,
            "trigger_word": r.trigger_word,
            "steps": r.steps,
            "is_style": r.is_style,
            "job_id": r.job_id,
            "backend": r.backend,
            "provider_request_id": r.provider_request_id,
            "cost_usd": r.cost_usd,
            "created_at": r.created_at,
            "weights": {"uri": r.weights_uri, "sha256": r.weights_sha256, "url": self.link(r.weights_key)},
            "config": (
                {"uri": r.config_uri, "sha256": r.config_sha256, "url": self.link(r.config_key)}
                if r.config_key
                else None
            ),
        }

    def _lora_query(self, p: Principal) -> Any:
        q = select(lora_versions)
        if not p.is_master:
            q = q.where(lora_versions.c.owner == (p.key_id or "-"))
        return q

    async def list_loras(self, p: Principal) -> dict[str, Any]:
        async with self.store.engine.connect() as conn:
            rows = (
                await conn.execute(
                    self._lora_query(p).order_by(lora_versions.c.name, lora_versions.c.version)
                )
            ).all()
        latest: dict[tuple[str, str], Any] = {}
        counts: dict[tuple[str, str], int] = {}
        for r in rows:
            latest[(r.owner, r.name)] = r
            counts[(r.owner, r.name)] = counts.get((r.owner, r.name), 0) + 1
        data = [
            {"name": r.name, "owner": r.key_id, "versions": counts[k], "latest": self._lora_version(r)}
            for k, r in latest.items()
        ]
        return {"object": "list", "data": data}

    async def get_lora(self, p: Principal, name: str) -> dict[str, Any]:
        async with self.store.engine.connect() as conn:
            rows = (
                await conn.execute(
                    self._lora_query(p).where(lora_versions.c.name == name).order_by(lora_versions.c.version)
                )
            ).all()
        if not rows:
            raise NotFoundError(f"No LoRA named '{name}' for this key; see GET /v1/loras.", param="name")
        return {"name": name, "object": "lora", "versions": [self._lora_version(r) for r in rows]}

    # --- cancelling -----------------------------------------------------------------------------
    async def cancel(self, p: Principal, job_id: str) -> dict[str, Any]:
        row = await self._visible(p, job_id)
        if row.status in TERMINAL:
            return self.render(row)
        now = time.time()
        async with self.store.engine.begin() as conn:
            # Not yet sent to any provider and held by no worker: cancelled here and now, nothing spent.
            done = await conn.execute(
                update(jobs)
                .where(
                    jobs.c.id == job_id,
                    jobs.c.status == "queued",
                    jobs.c.submit_sent_at.is_(None),
                    or_(jobs.c.lease_expires.is_(None), jobs.c.lease_expires < now),
                )
                .values(
                    status="cancelled",
                    step="done",
                    cost_usd=0.0,
                    finished_at=now,
                    updated_at=now,
                    cancel_requested=True,
                    error=_j({"code": "cancelled", "message": "Cancelled before it was sent to a provider."}),
                )
            )
            if done.rowcount == 1:
                await conn.execute(
                    insert(job_events).values(
                        job_id=job_id, ts=now, type="cancelled", data=_j({"status": "cancelled"})
                    )
                )
                await self._queue_webhook(conn, row, now)
            else:
                await conn.execute(
                    update(jobs).where(jobs.c.id == job_id).values(cancel_requested=True, updated_at=now)
                )
        if done.rowcount == 1:
            self._release(job_id, self._reservations.get(job_id), row.key_id, 0.0)
        else:
            r = self._running.get(job_id)
            if r is not None:
                r.wake.set()
        return self.render(await self._row(job_id))

    # --- provider webhooks ----------------------------------------------------------------------
    async def provider_webhook(self, backend_name: str, headers: dict[str, str], body: bytes) -> str:
        """A provider says a request ended: verify it, then wake the job (it fetches the result itself, so a
        forged or repeated webhook cannot change a job, only make it look sooner)."""
        st = self.manager.states.get(backend_name)
        if st is None or not isinstance(st.backend, GenerationBackend):
            raise NotFoundError(f"No generation backend '{backend_name}'.", param="backend")
        try:
            request_id = await asyncio.to_thread(st.backend.verify_webhook, headers, body)
        except ValueError as e:
            raise _Unauthorised(f"Webhook rejected: {e}") from None
        now = time.time()
        async with self.store.engine.begin() as conn:
            res = await conn.execute(
                update(jobs)
                .where(
                    jobs.c.provider_request_id == str(request_id),
                    jobs.c.backend == backend_name,
                    jobs.c.status == "running",
                )
                .values(notified_at=now)
                .returning(jobs.c.id)
            )
            ids = [r.id for r in res]
        for job_id in ids:
            r = self._running.get(job_id)
            if r is not None:
                r.wake.set()
        return ids[0] if ids else ""

    # --- the worker side ------------------------------------------------------------------------
    async def _claim_loop(self) -> None:
        while not self._stopping:
            try:
                await self._claim()
            except Exception:
                log.exception("jobs: claiming failed (retrying)")
            try:
                async with asyncio.timeout(self.config.claim_interval_s):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()

    async def _claim(self) -> None:
        free = self.config.workers - len(self._running)
        if free <= 0:
            return
        now = time.time()
        live = or_(jobs.c.lease_expires.is_(None), jobs.c.lease_expires < now)
        held = jobs.alias("held")
        # Keys at their limit and models whose every backend is at its cap are left out of the page, so
        # their waiting jobs neither bounce through a worker nor hide other keys' jobs behind them.
        saturated = (
            select(held.c.key_id)
            .where(held.c.key_id.is_not(None), held.c.lease_expires >= now)
            .group_by(held.c.key_id)
            .having(func.count() >= self.config.max_per_key)
        )
        q = select(jobs.c.id, jobs.c.key_id).where(
            jobs.c.status.in_(("queued", "running")),
            jobs.c.next_run_at <= now,
            live,
            or_(jobs.c.key_id.is_(None), jobs.c.key_id.not_in(saturated)),
        )
        blocked = await self._full_models()
        if blocked:
            # Only jobs still looking for a slot wait; one that holds a slot (a submit cut off by a crash,
            # to be failed as outcome unknown) must be claimed, or it would hold the slot for ever.
            q = q.where(
                or_(
                    jobs.c.step != "submit",
                    jobs.c.submit_sent_at.is_not(None),
                    tuple_(jobs.c.model, jobs.c.type).not_in(blocked),
                )
            )
        async with self.store.engine.connect() as conn:
            due = (await conn.execute(q.order_by(jobs.c.next_run_at).limit(free * 4))).all()
        for r in due:
            if free <= 0:
                break
            if r.id in self._running:
                continue
            if not await self._try_claim(r.id, r.key_id, now):
                continue  # another process was faster, or the key reached its limit meanwhile
            free -= 1
            wake = asyncio.Event()
            task = asyncio.create_task(self._run(r.id, wake), name=f"job:{r.id}")
            self._running[r.id] = _Running(task, wake)

    async def _lock(self, conn: Any, kind: str, name: str) -> None:
        """On PostgreSQL, a transaction-scoped advisory lock on (kind, name): a count and the UPDATE it
        guards, made by two processes at once, run one after the other (READ COMMITTED gives the second
        UPDATE a snapshot that sees the first one's commit). SQLite runs every write one at a time anyway,
        and a single UPDATE with its count in a subquery is atomic there."""
        if self.store.dialect == "postgresql":
            digest = hashlib.blake2b(f"hybridgate:jobs:{kind}:{name}".encode(), digest_size=8).digest()
            await conn.execute(
                text("SELECT pg_advisory_xact_lock(:id)"), {"id": int.from_bytes(digest, "big", signed=True)}
            )

    async def _try_claim(self, job_id: str, key_id: str | None, now: float) -> bool:
        """Take the job's lease, in one conditional UPDATE that also checks the key's limit (the count of
        its live leases), so two processes claiming at the same instant cannot exceed it."""
        live = or_(jobs.c.lease_expires.is_(None), jobs.c.lease_expires < now)
        q = update(jobs).where(jobs.c.id == job_id, jobs.c.status.in_(("queued", "running")), live)
        if key_id is not None:
            held = jobs.alias("held")
            count = (
                select(func.count())
                .select_from(held)
                .where(held.c.key_id == key_id, held.c.lease_expires >= now)
                .scalar_subquery()
            )
            q = q.where(count < self.config.max_per_key)
        async with self.store.engine.begin() as conn:
            if key_id is not None:
                await self._lock(conn, "key", key_id)
            got = await conn.execute(
                q.values(lease_owner=self.owner, lease_expires=now + self.config.lease_s)
            )
        return bool(got.rowcount == 1)

    @staticmethod
    def _at_backend(name: str) -> Any:
        """How many jobs hold a slot of backend `name`: sent or being sent to it and not yet seen done
        there (steps submit and wait). Counted in the database, so every process sees every job."""
        held = jobs.alias("at_backend")
        return (
            select(func.count())
            .select_from(held)
            .where(
                held.c.backend == name,
                held.c.submit_sent_at.is_not(None),
                held.c.status.in_(("queued", "running")),
                held.c.step.in_(("submit", "wait")),
            )
            .scalar_subquery()
        )

    async def _backend_load(self) -> dict[str, int]:
        async with self.store.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(jobs.c.backend, func.count())
                    .where(
                        jobs.c.backend.is_not(None),
                        jobs.c.submit_sent_at.is_not(None),
                        jobs.c.status.in_(("queued", "running")),
                        jobs.c.step.in_(("submit", "wait")),
                    )
                    .group_by(jobs.c.backend)
                )
            ).all()
        return {r[0]: int(r[1]) for r in rows}

    async def _full_models(self) -> list[tuple[str, str]]:
        """(model, job type) pairs whose every routable backend is at its concurrency cap now."""
        capped = [
            st
            for st in self.manager.states.values()
            if isinstance(st.backend, GenerationBackend) and st.backend.config.concurrency is not None
        ]
        if not capped:
            return []
        load = await self._backend_load()
        full = {
            st.name
            for st in capped
            if load.get(st.name, 0) >= st.backend.config.concurrency.max  # type: ignore[union-attr]
        }
        if not full:
            return []
        out = []
        models = {m for st in capped if st.name in full for m in st.backend.config.models}
        for model in sorted(models):
            for job_type, op in OPERATIONS.items():
                try:
                    plan, _ = self.manager.plan(Call(endpoint=op, body={}, model=model))
                except GatewayError:
                    continue
                gen = [st for st in plan if isinstance(st.backend, GenerationBackend)]
                if gen and all(st.name in full for st in gen):
                    out.append((model, job_type))
        return out

    async def _take_slot(self, job_id: str, b: GenerationBackend, model: str) -> bool:
        """Record that the job is being sent to `b` (submit_sent_at), in one conditional UPDATE that also
        checks `b`'s concurrency cap against every process's jobs; False when `b` is full."""
        q = update(jobs).where(jobs.c.id == job_id, jobs.c.lease_owner == self.owner)
        cap = b.config.concurrency
        if cap is not None:
            q = q.where(self._at_backend(b.name) < cap.max)
        now = time.time()
        async with self.store.engine.begin() as conn:
            if cap is not None:
                await self._lock(conn, "backend", b.name)
            res = await conn.execute(
                q.values(backend=b.name, backend_model=model, submit_sent_at=now, updated_at=now)
            )
            if res.rowcount == 1:
                return True
            owner = (await conn.execute(select(jobs.c.lease_owner).where(jobs.c.id == job_id))).scalar()
        if owner != self.owner:
            raise LeaseLost(job_id)
        return False

    async def _update(
        self, job_id: str, event: tuple[str, dict[str, Any]] | None = None, **values: Any
    ) -> None:
        """A checkpoint: applied only while this worker holds the job's lease (LeaseLost otherwise)."""
        now = time.time()
        values.setdefault("updated_at", now)
        async with self.store.engine.begin() as conn:
            res = await conn.execute(
                update(jobs).where(jobs.c.id == job_id, jobs.c.lease_owner == self.owner).values(**values)
            )
            if res.rowcount != 1:
                raise LeaseLost(job_id)
            if event is not None:
                await conn.execute(
                    insert(job_events).values(job_id=job_id, ts=now, type=event[0], data=_j(event[1]))
                )

    async def _heartbeat(self, job_id: str, run: asyncio.Task[None], wake: asyncio.Event) -> None:
        seen: tuple[Any, Any] | None = None
        while True:
            await asyncio.sleep(self.config.lease_s / 3)
            now = time.time()
            try:
                async with self.store.engine.begin() as conn:
                    res = await conn.execute(
                        update(jobs)
                        .where(jobs.c.id == job_id, jobs.c.lease_owner == self.owner)
                        .values(lease_expires=now + self.config.lease_s)
                        .returning(jobs.c.cancel_requested, jobs.c.notified_at)
                    )
                    row = res.first()
            except Exception as e:  # the database is away: keep trying until the lease is gone
                log.warning("jobs: heartbeat of %s failed: %s", job_id, e)
                continue
            if row is None:
                log.warning("jobs: lost the lease of %s; stopping it here", job_id)
                run.cancel()
                return
            if seen is not None and (row.cancel_requested, row.notified_at) != seen:
                wake.set()
            seen = (row.cancel_requested, row.notified_at)

    async def _run(self, job_id: str, wake: asyncio.Event) -> None:
        me = asyncio.current_task()
        assert me is not None
        hb = asyncio.create_task(self._heartbeat(job_id, me, wake), name=f"job:{job_id}:heartbeat")
        try:
            await self._steps(job_id, wake)
        except (LeaseLost, asyncio.CancelledError):
            pass
        except Exception:
            log.exception("jobs: %s stopped on an unexpected error", job_id)
        finally:
            hb.cancel()
            self._running.pop(job_id, None)
            with contextlib.suppress(Exception):
                async with self.store.engine.begin() as conn:
                    await conn.execute(
                        update(jobs)
                        .where(jobs.c.id == job_id, jobs.c.lease_owner == self.owner)
                        .values(lease_owner=None, lease_expires=None)
                    )
            self._wake.set()

    async def _steps(self, job_id: str, wake: asyncio.Event) -> None:
        while True:
            row = await self._row(job_id)
            if row is None or row.status in TERMINAL:
                return
            try:
                if row.step == "submit":
                    if not await self._submit(row):
                        return  # waiting for a backend's slot: the lease goes back, claimed again later
                elif row.step == "wait":
                    await self._wait(row, wake)
                elif row.step == "mirror":
                    await self._mirror(row)
                elif row.step == "record":
                    await self._record_lora(row)
                else:
                    await self._finish(row, "succeeded")
            except _Fail as f:
                await self._finish(row, "failed", error={"code": f.code, "message": f.message}, cost=f.cost)
                return
            except _Cancelled:
                # Still queued at the provider: it never ran, and costs nothing; once it ran, its request.
                state = _l((await self._row(job_id)).provider, {}).get("state")
                await self._finish(
                    row,
                    "cancelled",
                    error={"code": "cancelled", "message": "Cancelled at the client's request."},
                    cost=0.0 if state in (None, "queued") else None,
                )
                return
            except (_Retry, StorageError, BackendError, OSError) as e:
                await self._backoff(row, f"{type(e).__name__}: {e}")
                return

    async def _backoff(self, row: Any, why: str) -> None:
        attempts = row.attempts + 1
        if attempts >= self.config.max_attempts:
            await self._finish(
                row,
                "failed",
                error={"code": "retries_exhausted", "message": f"Gave up after {attempts} tries: {why}"},
            )
            return
        delay = min(60.0, 0.5 * 2 ** (attempts - 1))
        log.warning(
            "jobs: %s step %s failed (try %d), again in %.1fs: %s", row.id, row.step, attempts, delay, why
        )
        await self._update(
            row.id,
            event=("retrying", {"step": row.step, "attempt": attempts, "error": why, "delay_s": delay}),
            attempts=attempts,
            next_run_at=time.time() + delay,
        )

    def _backend(self, name: str | None) -> GenerationBackend:
        st = self.manager.states.get(name or "")
        if st is None or not isinstance(st.backend, GenerationBackend):
            raise _Fail("backend_gone", f"Backend '{name}' is no longer configured; the job cannot go on.")
        return st.backend

    async def _submit(self, row: Any) -> bool:
        """Send the job to the first backend of its plan that takes it; False when every one that could is
        at its concurrency cap (the job then waits, queued)."""
        if row.cancel_requested:
            raise _Cancelled
        if row.submit_sent_at is not None and row.provider_request_id is None:
            # Crashed between sending the submit and recording its answer: it may be running (and billing)
            # at the provider; sending it again could pay twice. Charged at its reserved bound.
            raise _Fail(
                "submit_outcome_unknown",
                f"The gateway stopped while submitting this job to '{row.backend}'; whether the provider "
                "received it is unknown, so it was not sent again.",
                cost=row.cost_reserved,
            )
        op = OPERATIONS[row.type]
        plan, skipped = self.manager.plan(Call(endpoint=op, body={}, model=row.model))
        job_input = _l(row.input, {})
        errors = [f"{a.backend}: {a.error}" for a in skipped]
        full: list[str] = []
        archive = await self._training_archive(row, job_input) if op == "lora_training" else None
        load = await self._backend_load() if any(st.backend.config.concurrency for st in plan) else {}
        for st in plan:
            b = st.backend
            if not isinstance(b, GenerationBackend):
                continue
            model = b.config.models[row.model]
            cap = b.config.concurrency
            if cap is not None and load.get(b.name, 0) >= cap.max:
                # Busy is not unhealthy: skipped for the next backend, as a chat call is (before any upload).
                full.append(f"{b.name} ({load[b.name]} of {cap.max} jobs)")
                continue
            if archive is not None:
                try:  # the provider's own storage: where its trainer reads the zip from
                    job_input["images_data_url"] = await b.upload(archive, "application/zip", "training.zip")
                except BackendError as e:
                    if e.marks_unhealthy:
                        st.record_failure(e.message)
                    errors.append(f"{b.name}: uploading the training archive: {e.message}")
                    continue
            for lo in job_input.get("loras") or []:
                # The provider fetches the weights from us: a signed link valid for the job's whole life.
                lo["url"] = (self.config.public_url or "") + self.signer.path(
                    lo["weights_key"], int(self.config.time_bound_s + _GRACE_S)
                )
            try:
                arguments = b.provider_input(op, model, job_input)
            except ValueError as e:
                raise _Fail("invalid_input", f"Backend '{b.name}' cannot run this input: {e}") from None
            if not await self._take_slot(row.id, b, model):  # filled up meanwhile (another worker or process)
                full.append(f"{b.name} (at its cap of {cap.max if cap else 0} jobs)")
                continue
            hook = self._provider_hook_url(b.name)
            t0 = time.perf_counter()
            try:
                ref = await b.submit(model, arguments, job_id=row.id, webhook_url=hook)
            except SubmitOutcomeUnknownError as e:
                st.record_failure(e.message)
                raise _Fail(
                    "submit_outcome_unknown", f"{b.name}: {e.message}", cost=row.cost_reserved
                ) from None
            except (BackendConnectError, BackendHTTPError) as e:
                if isinstance(e, BackendHTTPError) and not e.retryable:
                    raise _Fail(
                        "provider_rejected", f"{b.name} refused the job: {e.message}", cost=0.0
                    ) from None
                # Refused or unreachable before accepting: nothing was created; the next backend may take it.
                if e.marks_unhealthy:
                    st.record_failure(e.message)
                errors.append(f"{b.name}: {e.message}")
                await self._update(
                    row.id,
                    event=("fallback", {"backend": b.name, "error": e.message}),
                    submit_sent_at=None,
                    backend=None,
                    backend_model=None,
                )
                continue
            st.record_success((time.perf_counter() - t0) * 1000)
            now = time.time()
            await self._update(
                row.id,
                event=(
                    "running",
                    {"status": "running", "backend": b.name, "provider_request_id": ref.request_id},
                ),
                provider_request_id=ref.request_id,
                provider=_j(ref.data),
                step="wait",
                status="running",
                started_at=now,
                attempts=0,
            )
            return True
        if full:
            # Every backend that could take it is at its concurrency cap: the job waits, queued (no try is
            # used up); the claim loop leaves it alone until a slot frees (`_full_models`).
            provider = _l(row.provider, {})
            first = not provider.get("waiting_for")
            await self._update(
                row.id,
                event=("waiting", {"reason": "backends_at_capacity", "backends": full}) if first else None,
                provider=_j({**provider, "waiting_for": full}),
                next_run_at=time.time() + self.config.claim_interval_s,
            )
            return False
        raise _Retry("no backend accepted the job: " + ("; ".join(errors) or "none is available"))

    async def _training_archive(self, row: Any, job_input: dict[str, Any]) -> bytes | None:
        """The zip to train on, built once from image URLs or a video's frames and kept in storage (a retry
        reuses it); None when the job gives a ready archive URL."""
        if job_input.get("images_data_url"):
            return None
        key = f"jobs/{row.id}/training.zip"
        if await self.storage.exists(key):
            return await self.storage.get(key)
        try:
            if job_input.get("video_url"):
                data = await _lora.archive_from_video(
                    self.http_client, job_input["video_url"], job_input.get("frames", 12)
                )
            else:
                data = await _lora.archive_from_urls(self.http_client, job_input["image_urls"])
        except _lora.PrepareError as e:
            raise _Fail("invalid_input", f"Cannot prepare the training images: {e}", cost=0.0) from None
        info = await self.storage.put(key, data, "application/zip")
        await self._update(
            row.id, event=("prepared", {"archive_key": key, "size": info.size, "sha256": info.sha256})
        )
        return data

    def _provider_hook_url(self, backend: str) -> str | None:
        if not self.config.public_url:
            return None
        return f"{self.config.public_url}/v1/jobs/webhooks/{backend}"

    async def _wait(self, row: Any, wake: asyncio.Event) -> None:
        b = self._backend(row.backend)
        ref = Submitted(row.provider_request_id, _l(row.provider, {}))
        started = row.started_at or time.time()
        logs = _l(row.logs, [])
        seen_logs = len(logs)
        interval = 0.2
        last: tuple[Any, ...] | None = None
        shown = float(row.progress or 0.0)  # progress only moves forward, even across a restart
        failures = 0
        while True:
            fresh = await self._row(row.id)
            if fresh is None or fresh.lease_owner != self.owner:
                raise LeaseLost(row.id)
            if fresh.cancel_requested:
                with contextlib.suppress(BackendError):
                    answer = await b.cancel(row.backend_model, ref)
                    log.info("jobs: %s cancel at %s: %s", row.id, b.name, answer)
                raise _Cancelled
            try:
                st = await b.status(row.backend_model, ref, logs=True)
                failures = 0
            except ResultGoneError as e:
                # The provider forgot the request (its result expired while nobody was watching): billed there,
                # and nothing to copy. Never re-submitted.
                raise _Fail("result_expired", f"{b.name}: {e.message}", cost=row.cost_reserved) from None
            except BackendError as e:
                failures += 1
                if failures >= 5:
                    raise
                log.warning("jobs: status of %s failed (%s); polling again", row.id, e.message)
                st = None
            if st is not None:
                new = st.logs[seen_logs:] if len(st.logs) >= seen_logs else st.logs
                if new:
                    logs = (logs + new)[-_MAX_LOGS:]
                    seen_logs = len(st.logs)
                # What the provider says, never less than was shown: a provider that tells nothing (fal)
                # keeps the job at what it showed until the end, rather than at an invented figure that
                # its first real progress report (ComfyUI's websocket) could then undercut.
                progress = shown = max(shown, st.progress or 0.0)
                now_state = (st.state, st.queue_position, round(progress, 3), len(logs))
                if now_state != last:
                    last = now_state
                    data = {**_l(fresh.provider, {}), "queue_position": st.queue_position, "state": st.state}
                    await self._update(
                        row.id,
                        event=(
                            "progress",
                            {
                                "state": st.state,
                                "queue_position": st.queue_position,
                                "progress": progress,
                                "logs": new,
                            },
                        ),
                        logs=_j(logs),
                        progress=progress,
                        provider=_j(data),
                    )
                if st.state == "completed" or st.state == "failed":
                    if st.error or st.state == "failed":
                        usage = b.usage(
                            OPERATIONS[row.type], _l(row.input, {}), None, st, time.time() - started
                        )
                        raise _Fail(
                            "provider_failed",
                            f"{b.name}: {st.error or 'failed'}"
                            + (f" ({st.error_type})" if st.error_type else ""),
                            cost=self._price(b, usage, time.time() - started, row.backend_model),
                        )
                    try:
                        result = await b.result(row.backend_model, ref)
                    except ResultGoneError as e:
                        raise _Fail(
                            "result_expired", f"{b.name}: {e.message}", cost=row.cost_reserved
                        ) from None
                    except BackendHTTPError as e:
                        if not e.retryable:
                            raise _Fail("provider_failed", f"{b.name}: {e.message}", cost=0.0) from None
                        raise
                    await self._update(
                        row.id,
                        event=("completed_at_provider", {"metrics": st.metrics}),
                        result=_j(result),
                        step="mirror",
                        progress=1.0,
                        provider=_j({**_l(fresh.provider, {}), "metrics": st.metrics}),
                    )
                    self._wake.set()  # its backend slot is free: a job waiting for one may go now
                    return
                if st.state == "cancelled":
                    raise _Cancelled
            if time.time() - started > self.config.time_bound_s:
                with contextlib.suppress(BackendError):
                    await b.cancel(row.backend_model, ref)
                raise _Fail(
                    "timed_out",
                    f"The job ran past jobs.time_bound_s ({self.config.time_bound_s:g}s) and was cancelled.",
                    cost=row.cost_reserved,
                )
            wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await wake.wait()
            interval = min(interval * 1.5, self.config.provider_poll_s)

    async def _mirror(self, row: Any) -> None:
        """Copy every file of the result into storage, one checkpoint per file (a restart skips what is
        already kept)."""
        b = self._backend(row.backend)
        result = _l(row.result, {})
        op = OPERATIONS[row.type]
        artifacts = _l(row.artifacts, [])
        done = {a["role_index"] for a in artifacts}
        prefix = await self._artifact_prefix(row)
        for i, m in enumerate(b.media(op, result)):
            if i in done:
                continue
            name = m.file_name or m.url.rsplit("/", 1)[-1].split("?")[0] or f"{m.role}-{i}"
            safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name).lstrip("._-") or f"file{i}"
            key = f"{prefix}/{i}-{safe}" if op != "lora_training" else f"{prefix}/{safe}"
            try:
                info = await self.storage.put(
                    key, b.download(m.url), m.content_type or "application/octet-stream"
                )
            except ResultGoneError as e:
                raise _Fail("result_expired", f"{b.name}: {e.message}", cost=row.cost_reserved) from None
            artifacts.append(
                {
                    "role": m.role,
                    "role_index": i,
                    "key": info.key,
                    "uri": self.storage.uri(info.key),
                    "content_type": info.content_type,
                    "size": info.size,
                    "sha256": info.sha256,
                    "source_url": m.url,
                }
            )
            await self._update(
                row.id,
                event=(
                    "artifact",
                    {"role": m.role, "key": info.key, "size": info.size, "sha256": info.sha256},
                ),
                artifacts=_j(artifacts),
            )
        await self._update(row.id, step="record" if op == "lora_training" else "done")

    async def _artifact_prefix(self, row: Any) -> str:
        if row.type != "lora_training":
            return f"jobs/{row.id}"
        provider = _l(row.provider, {})
        version = provider.get("lora_version")
        name = _l(row.input, {})["name"]
        owner = row.key_id or "-"
        if version is None:
            # The next number after every recorded version and every one another unfinished training of
            # this name has already claimed (its files may be on their way to that folder).
            async with self.store.engine.connect() as conn:
                top = (
                    await conn.execute(
                        select(func.max(lora_versions.c.version)).where(
                            lora_versions.c.owner == owner, lora_versions.c.name == name
                        )
                    )
                ).scalar()
                others = (
                    await conn.execute(
                        select(jobs.c.input, jobs.c.provider).where(
                            jobs.c.type == "lora_training",
                            jobs.c.key_id == row.key_id
                            if row.key_id is not None
                            else jobs.c.key_id.is_(None),
                            jobs.c.status.in_(("queued", "running")),
                            jobs.c.id != row.id,
                        )
                    )
                ).all()
            claimed = [
                int(_l(o.provider, {}).get("lora_version") or 0)
                for o in others
                if _l(o.input, {}).get("name") == name
            ]
            version = max([int(top or 0), *claimed]) + 1
            await self._update(row.id, provider=_j({**provider, "lora_version": version}))
        return f"loras/{'master' if owner == '-' else owner}/{name}/v{version}"

    async def _record_lora(self, row: Any) -> None:
        b = self._backend(row.backend)
        job_input = _l(row.input, {})
        provider = _l(row.provider, {})
        arts = {a["role"]: a for a in _l(row.artifacts, [])}
        weights = arts.get("lora_weights")
        if weights is None:
            raise _Fail("no_weights", f"{b.name} returned no LoRA weights file.", cost=row.cost_reserved)
        config = arts.get("lora_config")
        cost = self._price(
            b,
            b.usage(
                OPERATIONS[row.type],
                job_input,
                _l(row.result),
                None,
                time.time() - (row.started_at or time.time()),
            ),
            time.time() - (row.started_at or time.time()),
            row.backend_model,
        )
        values = {
            "key_id": row.key_id,
            "owner": row.key_id or "-",
            "name": job_input["name"],
            "version": provider["lora_version"],
            "job_id": row.id,
            "trigger_word": job_input.get("trigger_word"),
            "steps": job_input["steps"],
            "is_style": job_input.get("is_style", False),
            "weights_uri": weights["uri"],
            "weights_key": weights["key"],
            "weights_sha256": weights["sha256"],
            "config_uri": config["uri"] if config else None,
            "config_key": config["key"] if config else None,
            "config_sha256": config["sha256"] if config else None,
            "provider_request_id": row.provider_request_id,
            "backend": row.backend,
            "cost_usd": cost,
            "created_at": time.time(),
        }
        try:
            async with self.store.engine.begin() as conn:
                exists = (
                    await conn.execute(select(lora_versions.c.id).where(lora_versions.c.job_id == row.id))
                ).first()
                if exists is None:
                    await conn.execute(insert(lora_versions).values(**values))
        except IntegrityError:
            raise _Fail(
                "lora_version_taken",
                f"Another training of '{values['name']}' recorded version {values['version']} at the same "
                "moment; this one's files are kept in the job's artifacts.",
                cost=None,
            ) from None
        await self._update(
            row.id,
            event=("lora_version", {"name": values["name"], "version": values["version"]}),
            step="done",
        )

    def _price(self, b: GenerationBackend, usage: Usage, seconds: float, backend_model: str) -> float:
        return price_usage(b.config.price_for(backend_model), usage, seconds)

    async def _finish(
        self, row: Any, status: str, *, error: dict[str, str] | None = None, cost: float | None = None
    ) -> None:
        """End the job: its state, its ledger row, the key's spend and the user's webhook in one transaction."""
        now = time.time()
        fresh = await self._row(row.id)
        if fresh is None or fresh.status in TERMINAL:
            return
        seconds = now - (fresh.started_at or now)
        usage = Usage(requests=0)
        if fresh.backend and fresh.provider_request_id:
            b = self._backend(fresh.backend)
            if status == "succeeded":
                usage = b.usage(OPERATIONS[fresh.type], _l(fresh.input, {}), _l(fresh.result), None, seconds)
                cost = self._price(b, usage, seconds, fresh.backend_model)
            elif cost is None:
                usage = Usage(requests=1)
                cost = self._price(b, usage, seconds, fresh.backend_model)
        cost = float(cost or 0.0)
        body_error = error
        async with self.store.engine.begin() as conn:
            res = await conn.execute(
                update(jobs)
                .where(jobs.c.id == row.id, jobs.c.lease_owner == self.owner)
                .values(
                    status=status,
                    step="done",
                    cost_usd=cost,
                    finished_at=now,
                    updated_at=now,
                    error=_j(body_error) if body_error else None,
                    lease_owner=None,
                    lease_expires=None,
                )
            )
            if res.rowcount != 1:
                raise LeaseLost(row.id)
            data = {"status": status, "cost_usd": cost}
            if body_error:
                data["error"] = body_error
            await conn.execute(insert(job_events).values(job_id=row.id, ts=now, type=status, data=_j(data)))
            if fresh.backend_model or cost:
                day = time.strftime("%Y-%m-%d", time.gmtime(now))
                await conn.execute(
                    insert(ledger).values(
                        ts=now,
                        day=day,
                        request_id=row.id[:64],
                        key_id=fresh.key_id,
                        key_name=fresh.key_name,
                        model=fresh.model,
                        backend=fresh.backend or "-",
                        backend_model=fresh.backend_model or "-",
                        input_tokens=0,
                        output_tokens=0,
                        estimated=False,
                        duration_s=seconds,
                        status=200 if status == "succeeded" else None,
                        ok=status == "succeeded",
                        streamed=False,
                        error=(body_error or {}).get("message", "")[:1000] or None,
                        cost_usd=cost,
                        operation=fresh.type,
                        images=usage.images,
                        gpu_seconds=usage.gpu_seconds,
                        training_tokens=usage.training_tokens,
                    )
                )
                if fresh.key_id is not None and cost:
                    await conn.execute(
                        update(api_keys)
                        .where(api_keys.c.id == fresh.key_id)
                        .values(spent_usd=api_keys.c.spent_usd + cost)
                    )
            await self._queue_webhook(conn, fresh, now, status=status)
        self._release(row.id, self._reservations.get(row.id), fresh.key_id, cost)
        log.info("jobs: %s %s (cost $%.6f)", row.id, status, cost)

    async def _queue_webhook(self, conn: Any, row: Any, now: float, status: str | None = None) -> None:
        if not row.webhook_url:
            return
        await conn.execute(
            insert(webhook_deliveries).values(
                id="msg_" + secrets.token_hex(12),
                job_id=row.id,
                url=row.webhook_url,
                body="",
                next_try_at=now,
                created_at=now,
            )
        )

    # --- outgoing webhooks ----------------------------------------------------------------------
    async def _webhook_loop(self) -> None:
        while not self._stopping:
            try:
                await self._deliver_due()
            except Exception:
                log.exception("jobs: webhook delivery failed (retrying)")
            await asyncio.sleep(0.5)

    async def _deliver_due(self) -> None:
        now = time.time()
        async with self.store.engine.connect() as conn:
            due = (
                await conn.execute(
                    select(webhook_deliveries)
                    .where(
                        webhook_deliveries.c.delivered_at.is_(None),
                        webhook_deliveries.c.failed_at.is_(None),
                        webhook_deliveries.c.next_try_at <= now,
                        or_(
                            webhook_deliveries.c.lease_expires.is_(None),
                            webhook_deliveries.c.lease_expires < now,
                        ),
                    )
                    .limit(20)
                )
            ).all()
        for d in due:
            async with self.store.engine.begin() as conn:
                got = await conn.execute(
                    update(webhook_deliveries)
                    .where(
                        webhook_deliveries.c.id == d.id,
                        or_(
                            webhook_deliveries.c.lease_expires.is_(None),
                            webhook_deliveries.c.lease_expires < now,
                        ),
                    )
                    .values(lease_expires=now + 30)
                )
            if got.rowcount == 1:
                await self._deliver(d)

    def sign_webhook(self, job_id: str, msg_id: str, ts: int, body: bytes) -> str:
        secret = base64.b64decode(self.webhook_secret(job_id).removeprefix("whsec_"))
        mac = hmac.new(secret, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
        return "v1," + base64.b64encode(mac).decode()

    async def _deliver(self, d: Any) -> None:
        body = d.body.encode()
        if not body:  # rendered once, at the first try: every retry sends the same bytes under the same id
            row = await self._row(d.job_id)
            body = (
                orjson.dumps({"type": f"job.{row.status}", "data": self.render(row)})
                if row is not None
                else b"{}"
            )
            async with self.store.engine.begin() as conn:
                await conn.execute(
                    update(webhook_deliveries)
                    .where(webhook_deliveries.c.id == d.id)
                    .values(body=body.decode())
                )
        ts = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": d.id,
            "webhook-timestamp": str(ts),
            "webhook-signature": self.sign_webhook(d.job_id, d.id, ts, body),
            "user-agent": "hybridgate-webhooks",
        }
        error = None
        try:
            r = await self.http_client.post(d.url, content=body, headers=headers)
            if 200 <= r.status_code < 300:
                async with self.store.engine.begin() as conn:
                    await conn.execute(
                        update(webhook_deliveries)
                        .where(webhook_deliveries.c.id == d.id)
                        .values(delivered_at=time.time(), attempts=d.attempts + 1, lease_expires=None)
                    )
                return
            error = f"HTTP {r.status_code}"
        except Exception as e:
            error = f"{type(e).__name__}: {e}"
        attempts = d.attempts + 1
        give_up = attempts >= 8
        async with self.store.engine.begin() as conn:
            await conn.execute(
                update(webhook_deliveries)
                .where(webhook_deliveries.c.id == d.id)
                .values(
                    attempts=attempts,
                    last_error=error,
                    next_try_at=time.time() + min(300.0, 0.5 * 2**attempts),
                    failed_at=time.time() if give_up else None,
                    lease_expires=None,
                )
            )


class _Cancelled(Exception):
    pass


class _Unauthorised(GatewayError):
    status = 401
    type = "authentication_error"
    code = "invalid_signature"


class _Conflict(GatewayError):
    status = 409
    type = "invalid_request_error"
    code = "idempotency_key_reused"


__all__ = ["JobEngine", "LeaseLost", "new_job_id"]
