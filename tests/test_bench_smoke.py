"""The overhead benchmark must keep working: run it once in smoke mode (a few requests per target)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

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


def test_pods_simulation_smoke_mode_drives_the_real_scaler_and_is_deterministic(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = importlib.util.spec_from_file_location("pods_sim", REPO / "benchmarks" / "pods_sim.py")
    assert spec is not None and spec.loader is not None
    sim = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "pods_sim", sim)  # its dataclasses look their module up
    spec.loader.exec_module(sim)
    from hybridgate.cloud import _autoscale

    decisions = []
    real = _autoscale.Scaler.decide

    def counted(self: Any, *a: Any, **kw: Any) -> Any:
        d = real(self, *a, **kw)
        decisions.append(d.desired)
        return d

    monkeypatch.setattr(_autoscale.Scaler, "decide", counted)
    assert sim.main(["--smoke", "--json"]) == 0
    first = orjson.loads(capsys.readouterr().out)
    assert decisions and max(decisions) <= 4 and min(decisions) == 0  # the product's own decisions
    assert sim.main(["--smoke", "--json", "--seed", "1"]) == 0
    assert orjson.loads(capsys.readouterr().out)["rows"] == first["rows"]  # same seed, same numbers
    rows = {r["policy"]: r for r in first["rows"]}
    assert set(rows) == {"hybridgate", "hybridgate (min 1)", "always-on (4)", "skyserve (QPS)"}
    calls = first["meta"]["calls"]
    assert calls > 1000
    for r in rows.values():
        assert r["calls"] == calls, r  # every call served or counted as still waiting
        assert r["max_replicas_up"] <= 4, r
        assert r["wait_p50_s"] <= r["wait_p95_s"] <= r["wait_p99_s"] <= r["wait_max_s"], r
    assert rows["always-on (4)"]["gpu_hours"] == 8.0 and rows["always-on (4)"]["waited_past_bound"] == 0
    assert 0 < rows["hybridgate"]["gpu_hours"] < rows["always-on (4)"]["gpu_hours"]
    assert rows["hybridgate"]["cold_starts"] > 0 and rows["skyserve (QPS)"]["cold_starts"] > 0
    assert sim.main(["--smoke"]) == 0
    assert "| hybridgate |" in capsys.readouterr().out  # the table
