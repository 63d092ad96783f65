"""The overhead benchmark must keep working: run it once in smoke mode (a few requests per target)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parent.parent


def test_overhead_benchmark_smoke_mode_serves_every_target_without_errors(tmp_path: Path) -> None:
    out = tmp_path / "overhead.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "overhead.py"), "--smoke", "--json-file", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = orjson.loads(out.read_bytes())
    rows = result["results"]
    assert {r["target"] for r in rows} == {"direct", "bare", "hybridgate"}
    for r in rows:
        assert r["requests"] > 0, r
        assert r["errors"] == 0, r
    assert {(r["mode"], r["concurrency"]) for r in rows if r["target"] == "hybridgate"} == {
        ("json", 1),
        ("json", 4),
        ("stream", 1),
        ("stream", 4),
    }
    for name in ("direct", "bare", "hybridgate"):
        assert result["ttft"][name]["errors"] == 0
        assert result["ttft"][name]["ttft_p50_ms"] > 0
        assert result["peak_rss_mb"][name] > 0
    # The gateway really did its accounting for these requests, not just proxy them.
    assert result["meta"]["hybridgate_metrics"]["hybridgate_requests_total"] > 0
    assert result["meta"]["hybridgate_metrics"]["hybridgate_cost_usd_total"] > 0


def test_streams_benchmark_smoke_mode_measures_every_target_without_errors(tmp_path: Path) -> None:
    out = tmp_path / "streams.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "streams.py"), "--smoke", "--json-file", str(out)],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "open-file limit:" in proc.stdout
    result = orjson.loads(out.read_bytes())
    rows = {r["target"]: r for r in result["rows"]}
    assert set(rows) == {"direct", "bare-aiohttp", "bare-ours", "hybridgate"}
    for r in rows.values():
        assert r["streams_per_s"] > 0, r
        assert r["errors"] == 0, r
        assert r["cpu_ms_per_stream"] > 0, r
        assert r["ttft_p99_ms"] > 0, r
    assert result["meta"]["nofile"] > 0
    [ratio] = result["ratios"]
    assert ratio["target"] == "hybridgate" and ratio["cpu_per_stream_vs_bare_ours"] > 0
