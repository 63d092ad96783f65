"""`hybridgate check --suite cloud` (a real process, the real SkyPilot SDK in .venv-sky) against
`hybridgate mock-skypilot`: the budget refusal launches nothing, no API server / no credentials skip with
the reason, a CPU run passes end to end through a real gateway, and what it started is torn down in every
case: when the completion fails, and when the check is killed with SIGTERM mid-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from hybridgate.testing.mocks.skypilot import start_mock_skypilot
from hybridgate.testing.procs import Proc

SKY_PYTHON = Path(__file__).resolve().parents[1] / ".venv-sky" / "bin" / "python"
pytestmark = pytest.mark.skypilot

if not SKY_PYTHON.exists():
    if os.environ.get("HYBRIDGATE_REQUIRE_SKYPILOT") == "1":
        raise RuntimeError(f"{SKY_PYTHON} is missing: `make .venv-sky` creates it (make test does)")
    pytest.skip(
        f"{SKY_PYTHON} is missing: `make .venv-sky` creates it (make test does)", allow_module_level=True
    )


@pytest.fixture(scope="module")
def fake() -> Iterator[Proc]:
    proc = start_mock_skypilot(launch_s=0.3)
    yield proc
    proc.stop()


def configure(fake: Proc, **changes: Any) -> None:
    httpx.post(fake.url + "/_mock/config", json=changes).raise_for_status()


@pytest.fixture(autouse=True)
def _reset(fake: Proc) -> Iterator[None]:
    yield
    configure(fake, no_capacity=[], enabled_clouds=["AWS", "GCP", "Azure"], server_args=[])


def state(fake: Proc) -> dict[str, Any]:
    return dict(httpx.get(fake.url + "/_mock/clusters").json())


def launches(fake: Proc) -> list[str]:
    reqs = httpx.get(fake.url + "/_mock/requests").json()["requests"]
    return [r["body"]["cluster_name"] for r in reqs if r["path"] == "/launch"]


def env(tmp_path: Path, fake: Proc | None) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("SKYPILOT_")}
    e.update(HOME=str(tmp_path), HYBRIDGATE_SKYPILOT_PYTHON=str(SKY_PYTHON))
    if fake is not None:
        e["SKYPILOT_API_SERVER_ENDPOINT"] = fake.url
    return e


def check(tmp_path: Path, fake: Proc | None, *args: str) -> tuple[int, dict[str, Any]]:
    cmd = [sys.executable, "-m", "hybridgate", "check", "--suite", "cloud", "--output", "json", *args]
    out = subprocess.run(cmd, env=env(tmp_path, fake), capture_output=True, text=True, timeout=240)
    try:
        report = json.loads(out.stdout)
    except ValueError:
        raise AssertionError(
            f"no JSON report (exit {out.returncode}): {out.stdout[-2000:]}\n{out.stderr[-3000:]}"
        ) from None
    return out.returncode, report


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in report["tests"]}


def test_the_budget_refuses_before_anything_is_launched(fake: Proc, tmp_path: Path) -> None:
    code, report = check(tmp_path, fake, "--cloud", "aws", "--gpu", "T4", "--budget-usd", "0.05")
    t = by_name(report)
    assert code == 1, report
    assert t["cloud.gate"]["status"] == "passed"
    assert t["cloud.preflight_cost"]["status"] == "failed"
    assert (
        "refused to start" in t["cloud.preflight_cost"]["error"]
        and "$0.22" in t["cloud.preflight_cost"]["error"]
    )
    assert t["cloud.preflight_cost"]["metrics"]["estimate_usd"] == pytest.approx(0.526 * 25 / 60, abs=1e-4)
    assert all(t[n]["status"] == "skipped" for n in ("cloud.launch_and_ready", "cloud.teardown"))
    assert launches(fake) == []


def test_skips_with_the_reason_without_an_api_server_or_credentials(fake: Proc, tmp_path: Path) -> None:
    code, report = check(tmp_path, None, "--cloud", "gcp", "--gpu", "none")
    assert code == 0 and report["summary"]["skipped"] == report["summary"]["total"] == 7, report
    assert "no SkyPilot API server configured" in by_name(report)["cloud.gate"]["error"]

    configure(fake, enabled_clouds=["Kubernetes"])
    code, report = check(tmp_path, fake, "--cloud", "aws", "--gpu", "none")
    assert code == 0 and report["summary"]["skipped"] == 7, report
    assert "no credentials for aws" in by_name(report)["cloud.gate"]["error"]
    assert launches(fake) == []


def test_a_cpu_run_passes_end_to_end_and_the_janitor_downs_leftovers(fake: Proc, tmp_path: Path) -> None:
    # A crashed run's leftover (older than a run can live) and a live run's cluster (young: kept).
    leftover = subprocess.run(
        [str(SKY_PYTHON), str(Path(__file__).resolve().parents[1] / "src/hybridgate/cloud/_sky_driver.py")],
        input=json.dumps(
            {
                "op": "launch",
                "name": "hg-smoke-old-x1",
                "task": {"run": "true", "resources": {"ports": [8000]}},
            }
        ),
        env=env(tmp_path, fake),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert json.loads(leftover.stdout)["ok"], leftover.stderr[-2000:]
    deadline = time.monotonic() + 30
    while "hg-smoke-old-x1" not in {c["name"] for c in state(fake)["clusters"]}:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    configure(fake, backdate={"hg-smoke-old-x1": 3600})

    code, report = check(tmp_path, fake, "--cloud", "aws", "--gpu", "none", "--max-minutes", "10")
    t = by_name(report)
    assert code == 0 and report["summary"]["passed"] == 7, report
    assert "hg-smoke-old-x1" in state(fake)["gone"]
    (cluster,) = [n for n in launches(fake) if n != "hg-smoke-old-x1"]
    assert cluster.startswith("hg-smoke-") and t["cloud.launch_and_ready"]["metrics"]["cluster"] == cluster
    assert t["cloud.completion"]["metrics"]["content"]
    assert t["cloud.ledger"]["metrics"]["cost_usd"] > 0
    assert cluster in state(fake)["gone"] and not state(fake)["clusters"]


def test_teardown_when_the_completion_fails(fake: Proc, tmp_path: Path) -> None:
    configure(fake, server_args=["--fail-rate", "1"])  # the instance's model server never answers
    code, report = check(
        tmp_path,
        fake,
        "--cloud",
        "azure",
        "--gpu",
        "none",
        "--max-minutes",
        "10",
        "--completion-timeout",
        "8",
    )
    t = by_name(report)
    assert code == 1 and t["cloud.completion"]["status"] == "failed", report
    assert t["cloud.teardown"]["status"] == "passed", report
    (cluster,) = launches(fake)[-1:]
    assert cluster in state(fake)["gone"] and not state(fake)["clusters"]


def test_teardown_when_the_check_is_killed_mid_run(fake: Proc, tmp_path: Path) -> None:
    configure(fake, server_args=["--fail-rate", "1"])  # so the run is still waiting when the signal comes
    before = len(launches(fake))
    cmd = [
        sys.executable,
        "-m",
        "hybridgate",
        "check",
        "--suite",
        "cloud",
        "--output",
        "json",
        "--cloud",
        "aws",
        "--gpu",
        "none",
        "--max-minutes",
        "10",
    ]
    proc = subprocess.Popen(
        cmd, env=env(tmp_path, fake), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while len(launches(fake)) == before or not state(fake)["clusters"]:
            assert proc.poll() is None and time.monotonic() < deadline, (
                proc.stderr.read() if proc.stderr else ""
            )
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    report = json.loads(out)
    t = by_name(report)
    assert "cloud.interrupted" in t, report
    assert proc.returncode == 1 and "SIGTERM" in t["cloud.interrupted"]["error"], report
    assert t["cloud.teardown"]["status"] == "passed", report
    assert not state(fake)["clusters"] and launches(fake)[-1] in state(fake)["gone"]
