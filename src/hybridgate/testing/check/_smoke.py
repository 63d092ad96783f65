"""The smoke suite: is it up, does it list models, do both completion endpoints answer, and fast enough."""

from __future__ import annotations

import time

from hybridgate.testing.check._cases import Case, Metrics, chat_body, fail_on, ok_json, percentile
from hybridgate.testing.check._context import CheckFailed, CheckSkipped, Context
from hybridgate.testing.check._schema import CHAT_COMPLETION, TEXT_COMPLETION, check, usage_problems

LATENCY_SAMPLES = 5


def health(ctx: Context) -> Metrics:
    p = ctx.probe
    assert p is not None, "the runner probes health before any test"
    if p.status == 404:
        raise CheckSkipped(f"no GET /health at {ctx.root} (HTTP 404; hosted APIs such as OpenAI have none)")
    if not 200 <= p.status < 300:
        raise CheckFailed(f"GET {ctx.root}/health answered HTTP {p.status}: {p.body[:200]}")
    return {"status": p.status, "latency_ms": round(p.latency_ms, 2)}


def models(ctx: Context) -> Metrics:
    ids = ctx.list_models()
    if not ids:
        raise CheckFailed("GET /v1/models lists no model")
    if ctx.opts.model is not None and ctx.opts.model not in ids:
        raise CheckFailed(f"--model {ctx.opts.model!r} is not among the listed models: {', '.join(ids[:20])}")
    return {"count": len(ids), "models": ids[:20], "model": ctx.model, "mock": ctx.is_mock(ctx.model)}


def completion(ctx: Context) -> Metrics:
    t0 = time.perf_counter()
    r = ctx.post(
        "completions", {"model": ctx.model, "prompt": "Say hello.", "max_tokens": 8, "temperature": 0}
    )
    ms = (time.perf_counter() - t0) * 1000
    j = ok_json(r, "POST /v1/completions")
    fail_on(check(j, TEXT_COMPLETION, "text_completion") + usage_problems(j, "text_completion", 8))
    return {
        "latency_ms": round(ms, 2),
        "finish_reason": j["choices"][0]["finish_reason"],
        "completion_tokens": j["usage"]["completion_tokens"],
    }


def chat_completion(ctx: Context) -> Metrics:
    t0 = time.perf_counter()
    r = ctx.post("chat/completions", chat_body(ctx, "Say hello.", 8))
    ms = (time.perf_counter() - t0) * 1000
    j = ok_json(r, "POST /v1/chat/completions")
    fail_on(check(j, CHAT_COMPLETION, "chat.completion") + usage_problems(j, "chat.completion", 8))
    return {
        "latency_ms": round(ms, 2),
        "finish_reason": j["choices"][0]["finish_reason"],
        "completion_tokens": j["usage"]["completion_tokens"],
    }


def latency(ctx: Context) -> Metrics:
    """A few short chat calls in a row; their p95 must stay under --max-p95-ms (or the smoke default)."""
    limit = ctx.opts.max_p95_ms or ctx.opts.default_smoke_p95_ms
    samples: list[float] = []
    for _ in range(LATENCY_SAMPLES):
        t0 = time.perf_counter()
        r = ctx.post("chat/completions", chat_body(ctx, "Reply with one word.", 4))
        samples.append((time.perf_counter() - t0) * 1000)
        ok_json(r, "POST /v1/chat/completions")
    m: Metrics = {
        "samples": len(samples),
        "p50_ms": round(percentile(samples, 0.5), 2),
        "p95_ms": round(percentile(samples, 0.95), 2),
        "threshold_ms": limit,
    }
    if m["p95_ms"] > limit:
        raise CheckFailed(f"p95 latency {m['p95_ms']:.0f} ms > threshold {limit:.0f} ms", m)
    return m


CASES = [
    Case("smoke.health", health),
    Case("smoke.models", models),
    Case("smoke.completion", completion),
    Case("smoke.chat_completion", chat_completion),
    Case("smoke.latency", latency),
]
