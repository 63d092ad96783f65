"""Load generators for the overhead benchmark: wrk (when installed) or a bounded aiohttp one; a TTFT probe.

Each returns plain numbers (requests, errors, requests/s, p50/p99 in ms) so the report does not care which
tool produced them. Everything targets 127.0.0.1 and is bounded by a duration or a count.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class LoadResult:
    """One load run against one URL at one concurrency."""

    tool: str
    concurrency: int
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    error_detail: dict[str, int] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rps": round(self.rps, 1)}


@dataclass
class TtftResult:
    """Sequential streamed requests: time to the first `data:` event and to the end of the stream."""

    requests: int
    errors: int
    ttft_p50_ms: float
    ttft_p99_ms: float
    total_p50_ms: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(sorted_values: list[float], q: float) -> float:
    """The q-th percentile (0..100) of an already sorted list, nearest-rank; 0.0 when empty."""
    if not sorted_values:
        return 0.0
    k = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


def wrk_path() -> str | None:
    return shutil.which("wrk")


_LUA = """
wrk.method = "POST"
wrk.body = [==[{body}]==]
{headers}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRK_JSON {{\\"requests\\":%d,\\"duration_us\\":%d,\\"connect\\":%d,\\"read\\":%d,\\"write\\":%d," ..
    "\\"status\\":%d,\\"timeout\\":%d,\\"p50_us\\":%d,\\"p99_us\\":%d}}\\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def run_wrk(url: str, body: bytes, headers: dict[str, str], concurrency: int, seconds: float) -> LoadResult:
    """Closed-loop load with wrk; the Lua script sets the POST body and prints the numbers as JSON."""
    exe = wrk_path()
    if exe is None:
        raise RuntimeError("wrk is not installed")
    hdr = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(_LUA.format(body=body.decode(), headers=hdr))
        script = fh.name
    # One wrk thread: it keeps up with these servers and leaves the second core to what is measured.
    cmd = [
        exe,
        "-t1",
        f"-c{concurrency}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        script,
        url,
    ]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30, check=False)
    finally:
        Path(script).unlink(missing_ok=True)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(
            f"wrk printed no result (exit {out.returncode}): {out.stdout[-500:]} {out.stderr[-500:]}"
        )
    d = json.loads(line[len("WRK_JSON ") :])
    detail = {k: d[k] for k in ("connect", "read", "write", "status", "timeout") if d[k]}
    return LoadResult(
        tool="wrk",
        concurrency=concurrency,
        requests=d["requests"],
        errors=sum(detail.values()),
        seconds=d["duration_us"] / 1e6,
        p50_ms=d["p50_us"] / 1000,
        p99_ms=d["p99_us"] / 1000,
        error_detail=detail,
    )


async def _py_load(
    url: str, body: bytes, headers: dict[str, str], concurrency: int, seconds: float, count: int | None
) -> LoadResult:
    import aiohttp

    latencies: list[float] = []
    errors: dict[str, int] = {}
    deadline = time.perf_counter() + seconds
    left = [count if count is not None else -1]

    async def worker(session: aiohttp.ClientSession) -> None:
        while time.perf_counter() < deadline and left[0] != 0:
            left[0] -= 1
            t0 = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    if resp.status >= 400:
                        errors[f"http_{resp.status}"] = errors.get(f"http_{resp.status}", 0) + 1
                        continue
            except (TimeoutError, aiohttp.ClientError, OSError) as e:
                errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
                continue
            latencies.append(time.perf_counter() - t0)

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    latencies.sort()
    return LoadResult(
        tool="python-aiohttp",
        concurrency=concurrency,
        requests=len(latencies) + sum(errors.values()),
        errors=sum(errors.values()),
        seconds=elapsed,
        p50_ms=percentile(latencies, 50) * 1000,
        p99_ms=percentile(latencies, 99) * 1000,
        error_detail=errors,
    )


def run_python(
    url: str, body: bytes, headers: dict[str, str], concurrency: int, seconds: float, count: int | None = None
) -> LoadResult:
    """Closed-loop load from this process (aiohttp, one connection per client), bounded by time and count."""
    return _run(_py_load(url, body, headers, concurrency, seconds, count))


async def _ttft(url: str, body: bytes, headers: dict[str, str], count: int, warmup: int) -> TtftResult:
    import aiohttp

    ttfts: list[float] = []
    totals: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        for i in range(warmup + count):
            first: float | None = None
            seen = b""
            t0 = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    async for part in resp.content.iter_any():
                        if first is None and b"data:" in part:
                            first = time.perf_counter() - t0
                        seen = (seen + part)[-64:]
                    end = time.perf_counter() - t0
                    ok = resp.status == 200 and first is not None and b"[DONE]" in seen
            except (TimeoutError, aiohttp.ClientError, OSError):
                ok = False
            if i < warmup:
                continue
            if not ok or first is None:
                errors += 1
                continue
            ttfts.append(first)
            totals.append(end)
    ttfts.sort()
    totals.sort()
    return TtftResult(
        requests=count,
        errors=errors,
        ttft_p50_ms=percentile(ttfts, 50) * 1000,
        ttft_p99_ms=percentile(ttfts, 99) * 1000,
        total_p50_ms=percentile(totals, 50) * 1000,
    )


def run_ttft(url: str, body: bytes, headers: dict[str, str], count: int, warmup: int = 10) -> TtftResult:
    """One client, one keep-alive connection, `count` streamed requests one after another."""
    return _run(_ttft(url, body, headers, count, warmup))


def _run(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)
