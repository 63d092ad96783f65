"""The load suite's worker: runs Locust as a library, headless, and writes the numbers to a JSON file.

It is a process of its own because importing Locust monkey-patches the standard library with gevent; the
caller (`hybridgate check`, or a pytest session) keeps its threads, sockets and asyncio untouched.
Usage: python -m hybridgate.testing._load_worker RESULT.json < SPEC.json
Imports nothing from hybridgate, so nothing is imported before gevent patches it; that is also why it sits
here and not in check/, whose package imports httpx (and ssl) before this module could run.
"""

from __future__ import annotations

import sys

from gevent import monkey

monkey.patch_all()

import itertools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402
from urllib.parse import urlsplit  # noqa: E402

import gevent  # noqa: E402
from geventhttpclient import HTTPClient  # noqa: E402
from locust import User, constant, task  # noqa: E402
from locust.env import Environment  # noqa: E402


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[max(0, min(len(s) - 1, math.ceil(q * len(s)) - 1))]


def run(spec: dict[str, Any]) -> dict[str, Any]:
    target = urlsplit(spec["target"])
    path = target.path.rstrip("/") + "/chat/completions"
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if spec.get("api_key"):
        headers["Authorization"] = f"Bearer {spec['api_key']}"
    messages = [{"role": "user", "content": "Write one short sentence about load testing."}]
    base = {
        "model": spec["model"],
        "messages": messages,
        "max_tokens": spec.get("max_tokens", 16),
        "temperature": 0,
    }
    bodies = {
        False: json.dumps(base).encode(),
        True: json.dumps({**base, "stream": True, "stream_options": {"include_usage": True}}).encode(),
    }
    ttfts: list[float] = []
    errors: dict[str, int] = {}
    counts = {"connection_errors": 0}
    root = f"{target.scheme}://{target.netloc}"

    class ChatUser(User):
        """Alternates plain and streamed chat calls; a stream counts as one request, timed to [DONE]."""

        wait_time = constant(0)

        def on_start(self) -> None:
            self.http = HTTPClient.from_url(
                root, concurrency=1, connection_timeout=5, network_timeout=spec["timeout_s"]
            )
            self.toggle = itertools.cycle((False, True))

        def on_stop(self) -> None:
            self.http.close()

        @task
        def chat(self) -> None:
            stream = next(self.toggle)
            t0 = time.perf_counter()
            exc: Exception | None = None
            length = 0
            first: float | None = None
            try:
                resp = self.http.post(path, body=bodies[stream], headers=headers)
                try:
                    if resp.status_code != 200:
                        raise RuntimeError(f"HTTP {resp.status_code}: {resp.read()[:200]!r}")
                    if not stream:
                        raw = resp.read()
                        length = len(raw)
                        if not json.loads(raw).get("choices"):
                            raise RuntimeError("an answer without choices")
                    else:
                        done = False
                        while not done:
                            line = resp.readline(b"\n")
                            if not line:
                                raise RuntimeError("the stream ended without [DONE]")
                            length += len(line)
                            if not line.startswith(b"data:"):
                                continue
                            data = line[5:].strip()
                            if data == b"[DONE]":
                                done = True
                                continue
                            obj = json.loads(data)
                            if "error" in obj:
                                raise RuntimeError(f"error event: {obj['error']}")
                            if first is None:
                                c = (obj.get("choices") or [{}])[0]
                                if (c.get("delta") or {}).get("content") or c.get("text"):
                                    first = time.perf_counter()
                finally:
                    resp.release()
            except (
                ConnectionRefusedError
            ) as e:  # the target is gone, not slow: the caller reports unreachable
                exc = e
                counts["connection_errors"] += 1
            except Exception as e:
                exc = e
            ms = (time.perf_counter() - t0) * 1000
            if exc is not None:
                key = f"{type(exc).__name__}: {exc}"[:200]
                errors[key] = errors.get(key, 0) + 1
            elif first is not None:
                ttfts.append((first - t0) * 1000)
            self.environment.events.request.fire(
                request_type="POST",
                name="chat (stream)" if stream else "chat",
                response_time=ms,
                response_length=length,
                exception=exc,
                context={},
            )

    env = Environment(user_classes=[ChatUser])
    runner = env.create_local_runner()
    runner.start(spec["users"], spawn_rate=spec["spawn_rate"])
    t_start = time.perf_counter()
    deadline = t_start + spec["duration_s"]

    def stop_at_deadline() -> None:
        # Checked against the real clock: gevent timers count from the loop's cached time, which can be stale
        # by however long the imports above took, and would end the run early.
        while (left := deadline - time.perf_counter()) > 0:
            gevent.sleep(min(left, 0.1))
        runner.quit()

    gevent.spawn(stop_at_deadline)
    runner.greenlet.join()
    elapsed = time.perf_counter() - t_start
    total = env.stats.total
    n = total.num_requests
    return {
        "requests": n,
        "failures": total.num_failures,
        "connection_errors": counts["connection_errors"],
        "elapsed_s": round(elapsed, 3),
        "requests_per_second": round(n / elapsed, 3) if elapsed > 0 else 0.0,
        "p50_latency_ms": float(total.get_response_time_percentile(0.50) or 0),
        "p95_latency_ms": float(total.get_response_time_percentile(0.95) or 0),
        "p99_latency_ms": float(total.get_response_time_percentile(0.99) or 0),
        "error_rate": round(total.num_failures / n, 6) if n else 0.0,
        "ttft_p50_ms": round(_percentile(ttfts, 0.50), 2),
        "ttft_p95_ms": round(_percentile(ttfts, 0.95), 2),
        "streams_timed": len(ttfts),
        "errors": dict(sorted(errors.items(), key=lambda kv: -kv[1])[:5]),
    }


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m hybridgate.testing._load_worker RESULT.json < SPEC.json", file=sys.stderr)
        return 3
    spec = json.loads(sys.stdin.read())
    result = run(spec)
    with open(argv[1], "w") as fh:
        json.dump(result, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
