"""The composition root: builds every component from the config, owns their lifespan, dispatches HTTP.

The two hot routes are an exact-path dict lookup on raw ASGI; every other request goes to the control
plane (a FastAPI app). State lives in the `Gateway` object; nothing is module-global, so tests build one
directly from a Config.
"""

from __future__ import annotations

import gc
import hmac
import logging
import os
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack

from hybridgate._asgi import (
    ClientGone,
    Receive,
    Scope,
    Send,
    header,
    quiet_denied_handshakes,
    refuse_websocket,
    send_error,
)
from hybridgate.api import control
from hybridgate.api.hot import InferenceRoutes
from hybridgate.auth import Authenticator, KeyCache, KeyStore, KeyWatcher, Principal, bearer_token
from hybridgate.backends import build_backend
from hybridgate.config import Config, ConfigError, load_config
from hybridgate.jobs import JobEngine
from hybridgate.ledger import Ledger
from hybridgate.observability import Metrics, configure_logging, flush_logs, log_request
from hybridgate.protocol import GatewayError, NotFoundError
from hybridgate.router import BackendManager
from hybridgate.serving import InferenceService, RequestContext, attempt_headers, request_id
from hybridgate.storage import Signer, Storage, StorageError, open_signer, open_storage
from hybridgate.store import Store
from hybridgate.training import TrainingService, parse_training

log = logging.getLogger("hybridgate.app")

HotHandler = Callable[[Scope, Receive, Send, RequestContext, Principal], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class Gateway:
    """The whole gateway as one ASGI callable."""

    def __init__(
        self,
        config: Config,
        *,
        master_key: str | None = None,
        priority: list[str] | None = None,
        tune_gc: bool = False,
    ) -> None:
        self.config = config
        # Only where the gateway owns the process (`hybridgate serve`): the GC settings are process-wide.
        self.tune_gc = tune_gc
        try:
            self.manager = BackendManager(
                [build_backend(b) for b in config.backends],
                priority or (),
                warming_wait_s=config.server.warming_wait_s,
            )
        except ValueError as e:
            raise ConfigError(str(e)) from None
        self.store = Store(config.database)  # connects (and migrates) at startup, not here
        try:
            self.storage: Storage = open_storage(config.storage, config.database)
        except StorageError as e:
            raise ConfigError(str(e)) from None
        self._signer: Signer | None = None
        self.keys = KeyCache()
        self.auth = Authenticator(master_key, self.keys)
        self.metrics = Metrics(lambda: [s.snapshot() for s in list(self.manager.states.values())])
        self.ledger = Ledger(self.store, self.metrics.registry)
        self.watcher = KeyWatcher(KeyStore(self.store), self.keys)
        self.jobs: JobEngine | None = (
            JobEngine(self.store, self.manager, self.ledger, self.storage, lambda: self.signer, config.jobs)
            if config.jobs.enabled
            else None
        )
        try:
            training = parse_training(config.training)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        self.training = (
            TrainingService(training, self.store, self.ledger, self.storage) if training.enabled else None
        )
        self.inference = InferenceService(self.manager, self.ledger.hooks_for)
        self.routes = routes = InferenceRoutes(
            self.inference, config.server.max_body_bytes, config.server.body_timeout_s
        )
        # The hot path: exact (method, path) -> handler; everything else is the control plane's.
        self.hot_routes: dict[tuple[str, str], HotHandler] = {
            ("POST", "/v1/chat/completions"): routes.chat,
            ("POST", "/v1/completions"): routes.completions,
        }
        # Control-plane routes also served as bare ASGI apps, without FastAPI's routing (filled by build():
        # the Tinker API's per-step routes).
        self.fast_routes: dict[tuple[str, str], ASGIApp] = {}
        self.control = control.build(self)
        self.started_at = time.time()
        self._stack: AsyncExitStack | None = None

    @property
    def signer(self) -> Signer:
        """Signs download links; its key is read (or created) in the data folder on first use."""
        if self._signer is None:
            self._signer = open_signer(self.config.storage, self.config.database)
        return self._signer

    def training_service(self) -> TrainingService:
        """The training API's service; a 404 naming the setting when the config turned it off."""
        if self.training is None:
            raise NotFoundError("The training API is off on this gateway (training.enabled: false).")
        return self.training

    def may_see_keys(self, authorization: str | None) -> bool:
        """Whether a caller may see per-key series on /metrics: the master key or the metrics token."""
        token = bearer_token(authorization)
        if token is None:
            return False
        wanted = self.config.server.metrics_token
        return self.auth.is_master(token) or (
            wanted is not None and hmac.compare_digest(token.encode(), wanted.encode())
        )

    # --- lifespan -------------------------------------------------------------------------------
    async def startup(self) -> None:
        """Start every owned resource in order; on a failure, stop what already started and raise."""
        async with AsyncExitStack() as stack:
            # Backends first: a local model starts loading while the database opens.
            await self.manager.start()
            stack.push_async_callback(self.manager.close)
            await self.store.open()
            stack.push_async_callback(self.store.close)
            await self.storage.start()
            stack.push_async_callback(self.storage.close)
            self.signer  # noqa: B018 - create the link-signing key now, not during a request
            await self.watcher.start()
            stack.push_async_callback(self.watcher.stop)
            await self.ledger.start()
            stack.push_async_callback(self.ledger.stop)  # flushes the last rows before the store closes
            if self.jobs is not None:
                await self.jobs.start()
                stack.push_async_callback(self.jobs.stop)  # hands its leases back before the store closes
            await self.routes.start()
            stack.push_async_callback(self.routes.stop)
            if self.training is not None:
                await self.training.start()
                stack.push_async_callback(self.training.close)
            self._stack = stack.pop_all()
        if self.tune_gc:
            _tune_gc()
        log.info(
            "gateway started",
            extra={
                "fields": {
                    "backends": [b.name for b in self.manager.backends],
                    "models": self.manager.models(),
                    "auth": self.auth.mode,
                    "config": self.config.source,
                }
            },
        )

    async def shutdown(self) -> None:
        """Stop everything startup started, in reverse order (each step runs even if one before failed)."""
        stack, self._stack = self._stack, None
        try:
            if stack is not None:
                await stack.aclose()
        finally:
            flush_logs()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as e:
                    log.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": f"{type(e).__name__}: {e}"})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                try:
                    await self.shutdown()
                except Exception as e:
                    log.exception("shutdown failed")
                    await send({"type": "lifespan.shutdown.failed", "message": f"{type(e).__name__}: {e}"})
                    return
                await send({"type": "lifespan.shutdown.complete"})
                return

    # --- dispatch -------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if len(path) > 1 and path.endswith("/"):
                path = path.rstrip("/") or "/"
                scope = {**scope, "path": path}
            handler = self.hot_routes.get((scope["method"], path))
            if handler is not None:
                await self._hot(handler, scope, receive, send)
            else:
                await self.fast_routes.get((scope["method"], path), self.control)(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "websocket":  # none served: a 404 in OpenAI's shape, not a crash
            await refuse_websocket(
                scope,
                receive,
                send,
                NotFoundError(f"This gateway serves no WebSocket route ({scope['path']}); see /docs."),
            )

    async def hot(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve a hot route's request that reached the control plane (never expected; kept correct)."""
        handler = self.hot_routes[("POST", scope["path"].rstrip("/"))]
        await self._hot(handler, scope, receive, send)

    async def _hot(self, handler: HotHandler, scope: Scope, receive: Receive, send: Send) -> None:
        t0 = time.perf_counter()
        ctx = RequestContext(request_id(header(scope, b"x-request-id")), scope["path"])
        try:
            ctx.principal = await self.auth.authenticate(header(scope, b"authorization"))
            await handler(scope, receive, send, ctx, ctx.principal)
        except GatewayError as e:
            ctx.status = e.status
            ctx.error = e.message
            # Who was tried, even on an error (a backend's own 4xx, all failed, the forced one failed).
            attempts = ctx.attempts or getattr(e, "attempts", None)
            backend = ctx.backend
            if backend is None and attempts:
                backend = next((a.backend for a in reversed(attempts) if a.reached_backend), None)
            await send_error(send, e, attempt_headers(backend, attempts, None, ctx.request_id))
        except ClientGone:
            ctx.status = 499
        except Exception as e:  # a bug here must still answer in OpenAI's shape, and be logged
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            ctx.status = 500
            await send_error(send, GatewayError(f"Internal gateway error: {type(e).__name__}"))
        finally:
            self._account(ctx, time.perf_counter() - t0)

    def _account(self, ctx: RequestContext, seconds: float) -> None:
        attempts = ctx.attempts or ()
        m = self.metrics
        model = ctx.model
        # A client's made-up names go in the log line, but must not create metric series without bound.
        label = model if model in self.manager.by_model else "(unknown)"
        # Every answer counts, refusals before a model was known (400, 401, 413...) under "(unknown)".
        m.labels(m.requests, label, str(ctx.status)).inc()
        tried = [a for a in attempts if a.reached_backend]
        for a in tried:
            m.labels(m.attempts, a.backend, "ok" if a.ok else "error").inc()
            if a.ok:
                m.labels(m.latency, a.backend).observe(a.duration_s)
            if a.cost_usd:
                m.labels(m.cost, a.backend).inc(a.cost_usd)
            if a.usage.prompt_tokens:
                m.labels(m.tokens, a.backend, "input").inc(a.usage.prompt_tokens)
            if a.usage.completion_tokens:
                m.labels(m.tokens, a.backend, "output").inc(a.usage.completion_tokens)
        if len(tried) > 1 and ctx.status < 400:
            m.labels(m.fallbacks, label).inc()
        if self.config.server.log_requests:
            p = ctx.principal
            record = {
                "id": ctx.request_id,
                "path": ctx.path,
                "key": p.name if p is not None else None,
                "model": model or None,
                "backend": ctx.backend,
                "attempts": [a.backend + ("" if a.ok else f"!{a.status or 'err'}") for a in tried],
                "status": ctx.status,
                "latency_ms": round(seconds * 1000, 2),
                "tokens_in": sum(a.usage.prompt_tokens for a in tried),
                "tokens_out": sum(a.usage.completion_tokens for a in tried),
                "cost_usd": round(sum(a.cost_usd for a in tried), 8),
            }
            if ctx.error is not None:
                record["error"] = ctx.error
            if ctx.stream_error is not None:
                record["stream_error"] = ctx.stream_error
            log_request(record)


# Young objects are collected after this many allocations (Python's default: 700). Each collection walks
# every object of every request in flight, so at 32 concurrent requests the default ran a collection
# every few requests; see benchmarks/README.md.
GC_GEN0_THRESHOLD = 10_000


def _tune_gc() -> None:
    """Keep what startup built (modules, config, pools) out of every later collection; collect less often.

    Cyclic garbage is still collected, about 14 times less often; objects freed by reference counting
    (most of what a request allocates) are not affected.
    """
    gc.collect()
    gc.freeze()
    gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(max(GC_GEN0_THRESHOLD, gen0), gen1, gen2)


def create_app(
    config: Config | None = None, env: dict[str, str] | None = None, *, tune_gc: bool = False
) -> Gateway:
    """Build the gateway from a config (the embedded default when None) and the environment.

    `tune_gc`: freeze what startup built and collect young objects less often (see `_tune_gc`); for a
    process that runs nothing but the gateway, as `hybridgate serve` does.
    """
    env = dict(os.environ) if env is None else env
    cfg = config or load_config(env.get("HYBRIDGATE_CONFIG") or None, env)
    priority = [p for p in env.get("HYBRIDGATE_PRIORITY", "").split(",") if p.strip()]
    return Gateway(
        cfg, master_key=env.get("HYBRIDGATE_MASTER_KEY") or None, priority=priority, tune_gc=tune_gc
    )


def app_factory() -> Gateway:
    """Entry point for `uvicorn --factory` and for each worker of `hybridgate serve --workers N`.

    A worker is a fresh interpreter: it sets up logging itself (HYBRIDGATE_LOG_LEVEL, default info).
    """
    configure_logging(os.environ.get("HYBRIDGATE_LOG_LEVEL") or "info")
    quiet_denied_handshakes()
    return create_app(tune_gc=True)


__all__ = ["Gateway", "app_factory", "create_app"]
