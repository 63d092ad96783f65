"""The load suite: drives the target with Locust in a worker process and judges the numbers it brings back."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import orjson

from hybridgate.testing.check._cases import Case, Metrics
from hybridgate.testing.check._context import CheckFailed, Context, TargetUnreachable

# Time the worker may take beyond --duration: Locust's import, spawning, and the last requests finishing.
_GRACE_S = 60.0


def run_worker(
    target: str,
    model: str,
    *,
    api_key: str | None,
    duration_s: float,
    users: int,
    spawn_rate: float,
    timeout_s: float,
) -> dict[str, float]:
    """Run `hybridgate.testing._load_worker` and return its numbers; CheckFailed if it broke or overran."""
    spec = {
        "target": target,
        "model": model,
        "api_key": api_key,
        "duration_s": duration_s,
        "users": users,
        "spawn_rate": spawn_rate,
        "timeout_s": timeout_s,
    }
    with tempfile.TemporaryDirectory(prefix="hybridgate-load-") as d:
        out = Path(d) / "result.json"
        try:
            # The spec travels on stdin so an API key never shows in the process list.
            proc = subprocess.run(
                [sys.executable, "-m", "hybridgate.testing._load_worker", str(out)],
                input=orjson.dumps(spec),
                capture_output=True,
                timeout=duration_s + _GRACE_S,
            )
        except subprocess.TimeoutExpired:
            raise CheckFailed(f"the load worker did not finish within {duration_s + _GRACE_S:.0f}s") from None
        if proc.returncode != 0 or not out.exists():
            tail = proc.stderr.decode(errors="replace")[-1500:]
            raise CheckFailed(f"the load worker failed (exit {proc.returncode}): {tail}")
        return dict(orjson.loads(out.read_bytes()))


def load(ctx: Context) -> Metrics:
    o = ctx.opts
    r = run_worker(
        o.target,
        ctx.model,
        api_key=o.api_key,
        duration_s=o.duration_s,
        users=o.users,
        spawn_rate=o.spawn_rate,
        timeout_s=o.request_timeout_s,
    )
    n = int(r["requests"])
    if n and r["connection_errors"] == n:
        raise TargetUnreachable(f"every one of {n} load requests was refused a connection")
    ctx.load_test = {
        k: r[k]
        for k in ("requests_per_second", "p50_latency_ms", "p95_latency_ms", "p99_latency_ms", "error_rate")
    }
    m: Metrics = {**r, "users": o.users, "duration_s": o.duration_s}
    breaches = []
    if n == 0 or r["failures"] == n:
        breaches.append(f"no load request succeeded ({n} sent)")
    if o.max_p95_ms is not None and r["p95_latency_ms"] > o.max_p95_ms:
        breaches.append(f"p95 latency {r['p95_latency_ms']:.0f} ms > threshold {o.max_p95_ms:.0f} ms")
    if o.max_error_rate is not None and r["error_rate"] > o.max_error_rate:
        breaches.append(f"error rate {r['error_rate']:.2%} > threshold {o.max_error_rate:.2%}")
    if breaches:
        raise CheckFailed("; ".join(breaches), m)
    return m


CASES = [Case("load.chat", load)]
