"""Startup time and resident memory of `hybridgate serve` on the embedded default, now and from another
checkout (`--baseline-src`), measured alternately in one run.

For each round and each source tree: start the gateway in a fresh working directory (a new SQLite file,
so migrations run), time until GET /health answers, then until the local model is ready (GET
/health/backends), and read the process's resident memory at both moments. Not a timed test: the
numbers move with the machine's load; read the medians.

    .venv/bin/python benchmarks/startup.py --rounds 5 --baseline-src /tmp/hybridgate-before
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=2) as r:
        return json.loads(r.read())


def one_start(src: Path, timeout: float = 180.0) -> dict[str, float]:
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(src / "src"), "HYBRIDGATE_LOG_LEVEL": "warning"}
    env.pop("HYBRIDGATE_CONFIG", None)
    with tempfile.TemporaryDirectory() as work:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "hybridgate", "serve", "--port", str(port)],
            cwd=work,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        out: dict[str, float] = {}
        try:
            deadline = time.monotonic() + timeout
            while "alive_s" not in out:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"gateway from {src} did not start")
                try:
                    _get(f"http://127.0.0.1:{port}/health")
                    out["alive_s"] = time.perf_counter() - t0
                    out["alive_rss_mb"] = _rss_mb(proc.pid)
                except OSError:
                    time.sleep(0.01)
            while "ready_s" not in out:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the local model of {src} was not ready in {timeout:g}s")
                backends = {
                    b["name"]: b for b in _get(f"http://127.0.0.1:{port}/health/backends")["backends"]
                }
                local = backends.get("local", {})
                if local.get("state") == "ready":
                    out["ready_s"] = time.perf_counter() - t0
                    out["ready_rss_mb"] = _rss_mb(proc.pid)
                elif local.get("state") == "failed":
                    raise RuntimeError(f"the local model failed: {local.get('last_error')}")
                else:
                    time.sleep(0.02)
        finally:
            proc.terminate()
            proc.wait(30)
        return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--baseline-src", type=Path, help="another checkout to measure alongside this one")
    args = ap.parse_args(argv)
    trees = {"now": ROOT}
    if args.baseline_src is not None:
        trees["before"] = args.baseline_src.resolve()
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in trees}
    for i in range(args.rounds):
        order = list(trees.items()) if i % 2 == 0 else list(reversed(trees.items()))
        for name, src in order:
            runs[name].append(one_start(src))
    print(f"{'tree':<8}{'alive s':>10}{'RSS alive MB':>14}{'model ready s':>15}{'RSS ready MB':>14}")
    summary = {}
    for name, rs in runs.items():
        med = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        summary[name] = med
        print(
            f"{name:<8}{med['alive_s']:>10.2f}{med['alive_rss_mb']:>14.0f}"
            f"{med['ready_s']:>15.2f}{med['ready_rss_mb']:>14.0f}"
        )
    print(f"medians of {args.rounds} alternating rounds; runs: {json.dumps(runs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
