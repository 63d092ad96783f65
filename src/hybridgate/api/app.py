"""The ASGI app: a small dispatcher over a route table, and a lifespan that owns every background task.

State lives in the `Gateway` object the lifespan starts; nothing is module-global, so tests build one
directly from a Config.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from hybridgate._asgi import (
    ClientGone,
    Receive,
    Scope,
    Send,
    header,
    read_body,
    send_bytes,
    send_error,
    send_json,
)
from hybridgate.api import admin, health, inference, usage
from hybridgate.auth import Authenticator, KeyCache, KeyStore, KeyWatcher, Principal
from hybridgate.backends import build_backend
from hybridgate.config import Config, ConfigError, load_config
from hybridgate.ledger import Ledger
from hybridgate.observability import Metrics, configure_logging, flush_logs, log_request
from hybridgate.protocol import GatewayError, NotFoundError
from hybridgate.protocol._errors import BadRequestError
from hybridgate.router import BackendManager, CallHooks, health_loop
from hybridgate.store import Store

log = logging.getLogger("hybridgate.app")

Handler = Callable[[Scope, Receive, Send], Awaitable[None]]


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
            self.manager = BackendManager([build_backend(b) for b in config.backends], priority or ())
        except ValueError as e:
            raise ConfigError(str(e)) from None
        self.store = Store(config.database)  # connects (and migrates) at startup, not here
        self.keys = KeyCache()
        self.auth = Authenticator(master_key, self.keys)
        self.metrics = Metrics(lambda: [s.snapshot() for s in self.manager.states.values()])
        self.ledger = Ledger(self.store, self.metrics.registry)
        self.started_at = time.time()
        self._tasks: list[asyncio.Task[None]] = []
        self._limit = config.server.max_body_bytes
        self.extra_startup: list[Callable[[], Awaitable[None]]] = []
        self.extra_shutdown: list[Callable[[], Awaitable[None]]] = []
        self.routes: dict[tuple[str, str], Handler] = {
            ("GET", "/health"): self._health,
            ("GET", "/health/backends"): self._health_backends,
            ("GET", "/metrics"): self._metrics,
        }
        # /v1 routes go through authentication; handlers get (scope, receive, send, ctx)
        self.v1_routes: dict[tuple[str, str], Callable[..., Awaitable[None]]] = {
            ("POST", "/v1/chat/completions"): self._chat,
            ("POST", "/v1/completions"): self._completions,
            ("GET", "/v1/models"): self._models,
            ("GET", "/v1/usage"): self._usage,
        }
        # Path prefixes with their own dispatch, tried only when no exact route matched.
        self.mounts: dict[str, Handler] = {
            admin.PREFIX: admin.AdminAPI(self.auth, KeyStore(self.store), self.keys, self.manager.models),
        }
        # Per call: budgets, rpm limits and a ledger row around every attempt.
        self.hooks_for: Callable[[Principal, dict[str, Any]], CallHooks] = self.ledger.hooks_for
        watcher = KeyWatcher(KeyStore(self.store), self.keys)
        self.extra_startup += [self.store.open, watcher.start, self.ledger.start]
        self.extra_shutdown += [self.ledger.stop, watcher.stop, self.store.close]

    # --- lifespan -------------------------------------------------------------------------------
    async def startup(self) -> None:
        for b in self.manager.backends:
            await b.start()
        for st in self.manager.states.values():
            self._tasks.append(asyncio.create_task(health_loop(st), name=f"health:{st.name}"))
        for fn in self.extra_startup:
            await fn()
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
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for fn in self.extra_shutdown:
            await fn()
        for b in self.manager.backends:
            await b.close()
        flush_logs()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as e:
                    log.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(e)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # --- dispatch -------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        method, path = scope["method"], scope["path"]
        if len(path) > 1 and path.endswith("/"):
            path = path.rstrip("/")
        plain = self.routes.get((method, path))
        if plain is not None:
            await plain(scope, receive, send)
            return
        handler = self.v1_routes.get((method, path))
        if handler is None:
            mount = next((h for p, h in self.mounts.items() if path.startswith(p)), None)
            if mount is not None:
                await mount(scope, receive, send)
                return
            await self._not_found(method, path, send)
            return
        t0 = time.perf_counter()
        ctx: dict[str, Any] = {"request_id": inference.request_id(scope), "path": path, "status": 0}
        try:
            ctx["principal"] = await self.auth.authenticate(header(scope, b"authorization"))
            await handler(scope, receive, send, ctx)
        except GatewayError as e:
            ctx["status"] = e.status
            ctx["error"] = e.message
            await send_error(send, e, _attempt_headers(ctx))
        except ClientGone:
            ctx["status"] = 499
        except Exception as e:  # a bug here must still answer in OpenAI's shape, and be logged
            log.exception("unhandled error on %s %s", method, path)
            ctx["status"] = 500
            await send_error(send, GatewayError(f"Internal gateway error: {type(e).__name__}"))
        finally:
            self._account(ctx, time.perf_counter() - t0)

    async def _not_found(self, method: str, path: str, send: Send) -> None:
        known = {p for (_, p) in [*self.routes, *self.v1_routes]}
        if path in known:
            err: GatewayError = BadRequestError(
                f"Method {method} is not allowed on {path}.", code="method_not_allowed"
            )
            err.status = 405
        else:
            err = NotFoundError(
                f"Unknown path {path}. This gateway serves /v1/chat/completions, /v1/completions, /v1/models."
            )
        await send_error(send, err)

    def _account(self, ctx: dict[str, Any], seconds: float) -> None:
        attempts = ctx.get("attempts") or ()
        m = self.metrics
        model = ctx.get("model", "")
        # A client's made-up names go in the log line, but must not create metric series without bound.
        label = model if model in self.manager.by_model else "(unknown)"
        if model:
            m.labels(m.requests, label, str(ctx["status"])).inc()
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
        if len(tried) > 1 and ctx["status"] < 400:
            m.labels(m.fallbacks, label).inc()
        if self.config.server.log_requests:
            p = ctx.get("principal")
            log_request(
                {
                    "id": ctx["request_id"],
                    "path": ctx["path"],
                    "key": getattr(p, "name", None),
                    "model": model or None,
                    "backend": ctx.get("backend"),
                    "attempts": [a.backend + ("" if a.ok else f"!{a.status or 'err'}") for a in tried],
                    "status": ctx["status"],
                    "latency_ms": round(seconds * 1000, 2),
                    "tokens_in": sum(a.usage.prompt_tokens for a in tried),
                    "tokens_out": sum(a.usage.completion_tokens for a in tried),
                    "cost_usd": round(sum(a.cost_usd for a in tried), 8),
                    **({"error": ctx["error"]} if "error" in ctx else {}),
                    **({"stream_error": ctx["stream_error"]} if "stream_error" in ctx else {}),
                }
            )

    # --- handlers -------------------------------------------------------------------------------
    async def _chat(self, scope: Scope, receive: Receive, send: Send, ctx: dict[str, Any]) -> None:
        raw = await read_body(scope, receive, self._limit)
        await inference.handle(self, "chat", scope, receive, send, raw, ctx)

    async def _completions(self, scope: Scope, receive: Receive, send: Send, ctx: dict[str, Any]) -> None:
        raw = await read_body(scope, receive, self._limit)
        await inference.handle(self, "completions", scope, receive, send, raw, ctx)

    async def _models(self, scope: Scope, receive: Receive, send: Send, ctx: dict[str, Any]) -> None:
        ctx["status"] = 200
        created = int(self.started_at)
        allowed = getattr(ctx["principal"], "allowed_models", None)
        data = [
            {"id": m, "object": "model", "created": created, "owned_by": "hybridgate"}
            for m in self.manager.models()
            if not allowed or m in allowed
        ]
        await send_json(send, 200, {"object": "list", "data": data})

    async def _usage(self, scope: Scope, receive: Receive, send: Send, ctx: dict[str, Any]) -> None:
        await usage.handle(self.ledger, scope, receive, send, ctx)

    async def _health(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_json(send, 200, health.liveness(self))

    async def _health_backends(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_json(send, 200, health.backends(self))

    async def _metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_bytes(
            send, 200, self.metrics.render(), [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")]
        )


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


def _attempt_headers(ctx: dict[str, Any]) -> list[tuple[bytes, bytes]]:
    attempts = ctx.get("attempts")
    if not attempts:
        return [(b"x-request-id", ctx["request_id"].encode())]
    return inference._headers(ctx.get("backend"), attempts, None, ctx["request_id"])


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
    return create_app(tune_gc=True)


__all__ = ["Gateway", "app_factory", "create_app"]
