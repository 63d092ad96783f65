"""`hybridgate check --suite cloud`: one real cloud instance through SkyPilot, end to end, torn down always.

1. **Gate:** the SkyPilot environment and an API server are configured and the cloud has credentials on
   it (`sky check`); otherwise every test is *skipped* with the reason (exit 0), never failed.
2. **Preflight cost:** the estimate (the on-demand price, the worst case of spot-then-on-demand, times
   `--max-minutes`, the dead-man bound) must fit `--budget-usd`, else nothing is launched (failed, exit 1).
3. **Janitor:** `hg-smoke-*` clusters older than `--max-minutes` (left by a crashed run) are torn down.
4. **Launch and ready:** a gateway (`hybridgate serve`) with a `pod` backend on the skypilot provider gets
   one chat completion; the pool launches the smallest instance (spot first), waits for its model server,
   and serves the completion through it.
5. **Ledger:** the gateway's ledger has the cluster's time as `pod_uptime` rows, costed.
6. **Teardown, in every case** (`finally`, SIGINT/SIGTERM turned into an exception that reaches it, the
   provider-side dead-man autostop as the last resort): the gateway stops (and downs its clusters), then
   every cluster of this run is downed and the API server must no longer list any.

The prices are approximate list prices (USD/hour, on-demand and spot) of the smallest fitting instance,
for the estimate only; `--price-per-hour` overrides them.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hybridgate.testing.check._report import Report, TestResult

CLOUDS = ("aws", "gcp", "azure")
GPUS = ("T4", "none")
PREFIX = "hg-smoke-"
# (cloud, gpu) -> (on-demand, spot) USD per hour, approximate list prices of the smallest instance:
# T4: g4dn.xlarge / n1-standard-4 + T4 / NC4as_T4_v3; none: 2 vCPU general purpose.
PRICES: dict[tuple[str, str], tuple[float, float]] = {
    ("aws", "T4"): (0.526, 0.21),
    ("gcp", "T4"): (0.54, 0.20),
    ("azure", "T4"): (0.526, 0.20),
    ("aws", "none"): (0.096, 0.04),
    ("gcp", "none"): (0.097, 0.03),
    ("azure", "none"): (0.096, 0.04),
}
MODELS = {"T4": "Qwen/Qwen2.5-0.5B-Instruct", "none": "hg-smoke-echo"}
VLLM_SETUP = "pip install -q 'vllm>=0.6,<1'"
VLLM_RUN = (
    'vllm serve "$MODEL" --host 0.0.0.0 --port "$PORT" --api-key "$HYBRIDGATE_REPLICA_API_KEY" '
    "--dtype half --max-model-len 2048"
)
# The cheapest path (--gpu none): a stdlib OpenAI-compatible echo server, shipped in the run command.
ECHO_SERVER = r"""python3 - <<'PYEOF'
import http.server, json, os, time
KEY, MODEL, PORT = os.environ["HYBRIDGATE_REPLICA_API_KEY"], os.environ["MODEL"], int(os.environ["PORT"])
class H(http.server.BaseHTTPRequestHandler):
    def send(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def authed(self):
        if self.headers.get("Authorization") == "Bearer " + KEY: return True
        self.send(401, {"error": {"message": "bad key", "type": "invalid_request_error"}}); return False
    def do_GET(self):
        if self.path == "/health": return self.send(200, {"status": "ok"})
        if self.path == "/v1/models" and self.authed():
            return self.send(200, {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "hg"}]})
        if self.path != "/v1/models": self.send(404, {"error": {"message": "not found"}})
    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0); req = json.loads(self.rfile.read(n) or b"{}")
        if self.path != "/v1/chat/completions": return self.send(404, {"error": {"message": "not found"}})
        if not self.authed(): return
        text = "echo: " + str((req.get("messages") or [{}])[-1].get("content", ""))[:200]
        self.send(200, {"id": "chatcmpl-hg", "object": "chat.completion", "created": int(time.time()),
            "model": MODEL, "choices": [{"index": 0, "finish_reason": "stop",
            "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 8, "completion_tokens": 8, "total_tokens": 16}})
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("0.0.0.0", PORT), H).serve_forever()
PYEOF"""


class Interrupted(BaseException):  # not swallowed by any `except Exception` on the way out
    """SIGINT or SIGTERM during a cloud check: unwinds to the teardown."""


@dataclass
class CloudCheckOptions:
    cloud: str
    gpu: str = "T4"
    budget_usd: float = 0.50
    max_minutes: int = 25
    price_per_hour: float | None = None
    api_server: str | None = None
    skypilot_python: str | None = None
    request_timeout_s: float | None = None  # the completion's wait (default: up to the deadline)
    run_id: str = field(default_factory=lambda: secrets.token_hex(3))

    def __post_init__(self) -> None:
        from hybridgate.testing.check._options import CheckConfigError

        if self.cloud not in CLOUDS:
            raise CheckConfigError(f"--cloud: choose one of {', '.join(CLOUDS)}, not {self.cloud!r}")
        if self.gpu not in GPUS:
            raise CheckConfigError(f"--gpu: choose one of {', '.join(GPUS)}, not {self.gpu!r}")
        if not self.budget_usd > 0:
            raise CheckConfigError(f"--budget-usd must be above 0, not {self.budget_usd!r}")
        if not 5 <= self.max_minutes <= 240:
            raise CheckConfigError(f"--max-minutes must be from 5 to 240, not {self.max_minutes!r}")
        if self.request_timeout_s is not None and not self.request_timeout_s > 0:
            raise CheckConfigError(f"--completion-timeout must be above 0, not {self.request_timeout_s!r}")
        if self.price_per_hour is not None and not self.price_per_hour > 0:
            raise CheckConfigError(f"--price-per-hour must be above 0, not {self.price_per_hour!r}")

    @property
    def prices(self) -> tuple[float, float]:
        """(on-demand, spot) USD per hour."""
        if self.price_per_hour is not None:
            return self.price_per_hour, self.price_per_hour
        return PRICES[(self.cloud, self.gpu)]

    @property
    def estimate_usd(self) -> float:
        return self.prices[0] * self.max_minutes / 60.0

    @property
    def backend(self) -> str:
        return f"smoke-{self.run_id}"

    @property
    def cluster_prefix(self) -> str:
        return f"hg-{self.backend}-"  # the pod pool's names: hg-<backend>-...


def configured_api_server(explicit: str | None) -> str | None:
    """The SkyPilot API server the SDK would use, without asking it: flag, env, ~/.sky/config.yaml."""
    if explicit:
        return explicit
    if os.environ.get("SKYPILOT_API_SERVER_ENDPOINT"):
        return os.environ["SKYPILOT_API_SERVER_ENDPOINT"]
    cfg = Path(os.environ.get("SKYPILOT_CONFIG") or Path.home() / ".sky" / "config.yaml")
    try:
        import yaml

        data = yaml.safe_load(cfg.read_text()) or {}
        endpoint = (data.get("api_server") or {}).get("endpoint")
        return str(endpoint) if endpoint else None
    except (OSError, ValueError, AttributeError):
        return None


@contextmanager
def _signals_to_teardown() -> Iterator[None]:
    """SIGINT/SIGTERM raise Interrupted in the main thread, so `finally` tears down what was started."""

    def handler(signum: int, _frame: Any) -> None:
        raise Interrupted(f"interrupted by {signal.Signals(signum).name}")

    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in old:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def run_cloud_check(opts: CloudCheckOptions, progress: Callable[[TestResult], None] | None = None) -> Report:
    report = Report(
        target=f"skypilot:{opts.cloud} ({opts.gpu})",
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    start = time.monotonic()

    def add(r: TestResult) -> TestResult:
        report.tests.append(r)
        if progress is not None:
            progress(r)
        return r

    try:
        with _signals_to_teardown():
            _run(opts, add)
    except Interrupted as e:  # the teardown ran on the way out (and is in the report)
        add(TestResult("cloud.interrupted", "failed", error=f"{e}; everything started was torn down"))
    finally:
        report.duration_seconds = time.monotonic() - start
    return report


NAMES = (
    "cloud.gate",
    "cloud.preflight_cost",
    "cloud.janitor",
    "cloud.launch_and_ready",
    "cloud.completion",
    "cloud.ledger",
    "cloud.teardown",
)


def _skip_rest(add: Callable[[TestResult], TestResult], after: str, why: str) -> None:
    for name in NAMES[NAMES.index(after) + 1 :]:
        add(TestResult(name, "skipped", error=why))


def _run(opts: CloudCheckOptions, add: Callable[[TestResult], TestResult]) -> None:
    from hybridgate.cloud import CloudError, CloudSetupError, CloudUnavailableError
    from hybridgate.cloud.skypilot import SkyPilotSettings, find_python

    # 1. gate ----------------------------------------------------------------------------------------
    t0 = time.monotonic()
    try:
        python = str(find_python(opts.skypilot_python))
    except CloudSetupError as e:
        add(TestResult("cloud.gate", "skipped", time.monotonic() - t0, error=f"SKIPPED: {e.message}"))
        _skip_rest(add, "cloud.gate", "gate not passed")
        return
    server = configured_api_server(opts.api_server)
    if not server:
        why = (
            "SKIPPED: no SkyPilot API server configured (--api-server, SKYPILOT_API_SERVER_ENDPOINT or "
            "api_server.endpoint in ~/.sky/config.yaml); hybridgate never starts one"
        )
        add(TestResult("cloud.gate", "skipped", time.monotonic() - t0, error=why))
        _skip_rest(add, "cloud.gate", "gate not passed")
        return
    settings = SkyPilotSettings(
        python=python, api_server=server, infra=opts.cloud, deadman_minutes=opts.max_minutes
    )
    provider = _sync_provider(settings)
    try:
        try:
            info = provider.run(_info(provider))
        except CloudError as e:
            why = f"SKIPPED: the SkyPilot API server at {server} cannot be used: {e.message}"
            if isinstance(e, CloudUnavailableError):
                why = f"SKIPPED: the SkyPilot API server at {server} is unreachable: {e.message}"
            add(TestResult("cloud.gate", "skipped", time.monotonic() - t0, error=why))
            _skip_rest(add, "cloud.gate", "gate not passed")
            return
        enabled = info["enabled_clouds"]
        if opts.cloud not in enabled:
            why = (
                f"SKIPPED: no credentials for {opts.cloud} on the SkyPilot API server at {server} "
                f"(enabled: {', '.join(enabled) or 'none'}; run `sky check {opts.cloud}` there)"
            )
            add(TestResult("cloud.gate", "skipped", time.monotonic() - t0, error=why))
            _skip_rest(add, "cloud.gate", "gate not passed")
            return
        add(
            TestResult(
                "cloud.gate",
                "passed",
                time.monotonic() - t0,
                metrics={"api_server": server, "server_version": info["server_version"], "cloud": opts.cloud},
            )
        )

        # 2. preflight cost ----------------------------------------------------------------------------
        on_demand, spot = opts.prices
        cost = {
            "estimate_usd": round(opts.estimate_usd, 4),
            "budget_usd": opts.budget_usd,
            "on_demand_per_hour": on_demand,
            "spot_per_hour": spot,
            "max_minutes": opts.max_minutes,
        }
        if opts.estimate_usd > opts.budget_usd:
            add(
                TestResult(
                    "cloud.preflight_cost",
                    "failed",
                    error=(
                        f"refused to start: the estimate ${opts.estimate_usd:.2f} ({opts.gpu} on {opts.cloud} at "
                        f"up to ${on_demand:g}/h for up to {opts.max_minutes} min) is above --budget-usd "
                        f"${opts.budget_usd:.2f}; nothing was launched"
                    ),
                    metrics=cost,
                )
            )
            _skip_rest(add, "cloud.preflight_cost", "refused by the budget")
            return
        add(TestResult("cloud.preflight_cost", "passed", metrics=cost))

        # 3. janitor -----------------------------------------------------------------------------------
        t0 = time.monotonic()
        try:
            downed = provider.run(_janitor(provider, opts.max_minutes))
            add(
                TestResult(
                    "cloud.janitor",
                    "passed",
                    time.monotonic() - t0,
                    metrics={
                        "downed": len(downed),
                        "note": f"tore down leftovers: {', '.join(downed)}" if downed else None,
                    },
                )
            )
        except CloudError as e:
            add(TestResult("cloud.janitor", "failed", time.monotonic() - t0, error=e.message))

        # 4-7. the run, torn down in every case ---------------------------------------------------------
        _launch_serve_teardown(opts, provider, python, server, add)
    finally:
        provider.run(provider.close())
        provider.loop.close()


def _sync_provider_class() -> type:
    from hybridgate.cloud.skypilot import SkyPilotProvider

    class SyncProvider(SkyPilotProvider):
        """The provider on one event loop of its own for the whole check, so its SDK worker (and
        `import sky`) is reused across the steps; `run` drives one coroutine on it."""

        def __init__(self, settings: Any) -> None:
            super().__init__(settings)
            self.loop = asyncio.new_event_loop()

        def run(self, coro: Any) -> Any:
            return self.loop.run_until_complete(coro)

    return SyncProvider


def _sync_provider(settings: Any) -> Any:
    return _sync_provider_class()(settings)


async def _info(provider: Any) -> dict[str, Any]:
    info = await provider.info()
    info["enabled_clouds"] = await provider.enabled_clouds()
    return info


async def _janitor(provider: Any, max_minutes: int) -> list[str]:
    """Tear down `hg-smoke-*` clusters older than a run can live (their run crashed)."""
    downed = []
    now = time.time()
    for c in await provider.clusters():
        name = str(c.get("name") or "")
        launched = c.get("launched_at") or now
        if name.startswith(PREFIX) and now - float(launched) > max_minutes * 60:
            await provider.terminate(name)
            downed.append(name)
    return downed


def _gateway_config(opts: CloudCheckOptions, python: str, server: str, workdir: Path) -> dict[str, Any]:
    on_demand, _spot = opts.prices
    skypilot: dict[str, Any] = {
        "python": python,
        "api_server": server,
        "infra": opts.cloud,
        "spot": "spot_then_on_demand",
        "deadman_minutes": opts.max_minutes,
    }
    if opts.gpu == "none":
        skypilot.update(cpus="2+", run=ECHO_SERVER)
    else:
        skypilot.update(setup=VLLM_SETUP, run=VLLM_RUN)
    ready_s = max(60.0, opts.max_minutes * 60.0 - 120.0)
    return {
        "server": {"warming_wait_s": ready_s},
        "database": f"sqlite:///{workdir / 'smoke.db'}",
        "backends": [
            {
                "name": opts.backend,
                "kind": "pod",
                "models": {"smoke": MODELS[opts.gpu]},
                "options": {
                    "provider": "skypilot",
                    "gpu_types": [] if opts.gpu == "none" else [opts.gpu],
                    "min_replicas": 0,
                    "max_replicas": 1,
                    "idle_stop_s": opts.max_minutes * 60.0,
                    "idle_action": "terminate",
                    "stop_on_shutdown": True,
                    "ready_timeout_s": ready_s,
                    "retry_s": opts.max_minutes * 60.0,  # one launch per run, never a second
                    "poll_s": 2.0,
                    "cost_flush_s": 2.0,
                    "price_per_hour": on_demand,  # the estimate's rate: the worst case of the two
                    "skypilot": skypilot,
                },
            }
        ],
    }


def _launch_serve_teardown(
    opts: CloudCheckOptions, provider: Any, python: str, server: str, add: Callable[[TestResult], TestResult]
) -> None:
    import httpx

    from hybridgate.testing.procs import Proc, start_gateway

    master = "sk-smoke-" + secrets.token_hex(16)
    workdir = Path(tempfile.mkdtemp(prefix="hybridgate-cloud-check-"))
    config = _gateway_config(opts, python, server, workdir)
    deadline_s = opts.max_minutes * 60.0 - 60.0
    gw: Proc | None = None
    results: dict[str, TestResult] = {}
    try:
        t0 = time.monotonic()
        try:
            gw = start_gateway(config, env={"HYBRIDGATE_MASTER_KEY": master}, workdir=workdir, timeout=120)
        except Exception as e:
            results["cloud.launch_and_ready"] = TestResult(
                "cloud.launch_and_ready",
                "failed",
                time.monotonic() - t0,
                error=f"the gateway did not start: {e}",
            )
            return
        import openai

        client = openai.OpenAI(
            base_url=gw.base_url, api_key=master, max_retries=0, timeout=opts.request_timeout_s or deadline_s
        )
        try:
            raw = client.chat.completions.with_raw_response.create(
                model="smoke", messages=[{"role": "user", "content": "Say hello."}], max_tokens=8
            )
            answer = raw.parse()
            text = answer.choices[0].message.content or ""
            pods = httpx.get(
                gw.url + "/v1/pods", headers={"Authorization": f"Bearer {master}"}, timeout=30
            ).json()
            pod = (pods.get("data") or [{}])[0]
            ready_at = next((t["at"] for t in pod.get("transitions", []) if t["state"] == "ready"), None)
            first = (pod.get("transitions") or [{}])[0].get("at")
            results["cloud.launch_and_ready"] = TestResult(
                "cloud.launch_and_ready",
                "passed",
                time.monotonic() - t0,
                metrics={
                    "cluster": pod.get("id"),
                    "instance": pod.get("gpu"),
                    "time_to_ready_s": round(ready_at - first, 1) if ready_at and first else None,
                },
            )
            ok = raw.headers.get("x-hybridgate-backend") == opts.backend and bool(text.strip())
            results["cloud.completion"] = TestResult(
                "cloud.completion",
                "passed" if ok else "failed",
                error=None
                if ok
                else f"backend {raw.headers.get('x-hybridgate-backend')!r}, content {text!r}",
                metrics={"content": text[:80]},
            )
            # The instance's time is booked while it runs (every cost_flush_s): wait for a costed row.
            deadline = time.monotonic() + 90
            while True:
                results["cloud.ledger"] = _ledger(workdir / "smoke.db", opts)
                if results["cloud.ledger"].status == "passed" or time.monotonic() > deadline:
                    break
                time.sleep(1.0)
        except Exception as e:
            results["cloud.launch_and_ready"] = results.get("cloud.launch_and_ready") or TestResult(
                "cloud.launch_and_ready",
                "failed",
                time.monotonic() - t0,
                error=f"{type(e).__name__}: {e}"[:500],
            )
            results["cloud.completion"] = TestResult(
                "cloud.completion", "failed", error=f"{type(e).__name__}: {e}"[:500]
            )
    finally:
        teardown = _teardown(opts, provider, gw)  # runs on every path out, Interrupted included
        for name in NAMES[NAMES.index("cloud.launch_and_ready") : -1]:
            add(results.get(name) or TestResult(name, "skipped", error="not reached"))
        add(teardown)


def _teardown(opts: CloudCheckOptions, provider: Any, gw: Any) -> TestResult:
    """Stop the gateway (it downs its clusters), then down every cluster of this run; the API server must
    list none afterwards."""
    t0 = time.monotonic()
    notes = []
    if gw is not None:
        gw.stop(timeout=120)
        notes.append(f"gateway exited with {gw.popen.returncode}")
    why: str | None = None
    for attempt in range(3):
        try:
            left = provider.run(_down_run(provider, opts.cluster_prefix))
            why = f"clusters still listed after teardown: {', '.join(left)}" if left else None
        except Exception as e:
            why = f"teardown failed: {type(e).__name__}: {e}"
        if why is None:
            break
        time.sleep(2 * (attempt + 1))
    metrics = {"note": "; ".join(notes)}
    if why is not None:
        why += f" (their dead-man autostop downs them within {opts.max_minutes} min)"
        return TestResult("cloud.teardown", "failed", time.monotonic() - t0, error=why, metrics=metrics)
    return TestResult("cloud.teardown", "passed", time.monotonic() - t0, metrics=metrics)


async def _down_run(provider: Any, prefix: str) -> list[str]:
    """Down every cluster of this run; the names still listed afterwards."""
    for c in await provider.clusters():
        if str(c.get("name") or "").startswith(prefix):
            await provider.terminate(str(c["name"]))
    return [str(c["name"]) for c in await provider.clusters() if str(c.get("name") or "").startswith(prefix)]


def _ledger(db: Path, opts: CloudCheckOptions) -> TestResult:
    try:
        with sqlite3.connect(db) as c:
            row = c.execute(
                "select sum(duration_s), sum(cost_usd), count(*) from ledger "
                "where operation = 'pod_uptime' and backend = ?",
                (opts.backend,),
            ).fetchone()
    except sqlite3.Error as e:
        return TestResult("cloud.ledger", "failed", error=f"cannot read the gateway's ledger: {e}")
    seconds, cost, rows = float(row[0] or 0), float(row[1] or 0), int(row[2] or 0)
    expected = seconds * opts.prices[0] / 3600.0
    ok = rows > 0 and cost > 0 and abs(cost - expected) <= max(1e-9, expected * 1e-6)
    return TestResult(
        "cloud.ledger",
        "passed" if ok else "failed",
        error=None
        if ok
        else f"pod_uptime rows {rows}, {seconds:.1f}s, ${cost:.6f} (expected ${expected:.6f})",
        metrics={"billed_s": round(seconds, 1), "cost_usd": round(cost, 6), "rows": rows},
    )


__all__ = [
    "CLOUDS",
    "GPUS",
    "PRICES",
    "CloudCheckOptions",
    "Interrupted",
    "configured_api_server",
    "run_cloud_check",
]
