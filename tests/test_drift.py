"""`hybridgate drift` on real contract reports: the mock server's, and the gateway's in front of it."""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from hybridgate.cli import app
from hybridgate.testing.check import CheckOptions, run_check
from hybridgate.testing.drift import ABSENT, compare, load_report
from hybridgate.testing.procs import start_gateway, start_mock_server


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Contract reports of a bare mock server and of a gateway proxying to it (openai-kind backend)."""
    mock = start_mock_server()
    d = tmp_path_factory.mktemp("drift")
    gw = start_gateway(
        {
            "backends": [
                {
                    "name": "up",
                    "kind": "openai",
                    "base_url": mock.base_url,
                    "models": {"mock": "mock"},
                    "price": {"free": True},
                }
            ]
        },
        workdir=d,
    )
    try:
        mock_report = run_check(CheckOptions.create(mock.base_url, "contract")).as_dict()
        gw_report = run_check(CheckOptions.create(gw.base_url, "contract")).as_dict()
    finally:
        gw.stop()
        mock.stop()
    assert mock_report["summary"]["failed"] == gw_report["summary"]["failed"] == 0
    yield {"mock": mock_report, "gateway": gw_report, "dir": d}


def write(d: Path, name: str, report: dict[str, Any]) -> str:
    p = d / name
    p.write_bytes(orjson.dumps(report))
    return str(p)


def test_no_drift_between_the_mock_and_the_gateway_in_front_of_it(reports: dict[str, Any]) -> None:
    a = write(reports["dir"], "mock.json", reports["mock"])
    b = write(reports["dir"], "gateway.json", reports["gateway"])
    p = subprocess.run(
        [sys.executable, "-m", "hybridgate", "drift", a, b], capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "no drift across 16 contract tests" in p.stdout


def test_drift_names_each_field_and_behaviour_that_differs(reports: dict[str, Any]) -> None:
    real = copy.deepcopy(reports["mock"])
    tests = {t["name"]: t for t in real["tests"]}
    # What a real backend might do differently: an extra field, a missing one, a different error param,
    # a stream without the role announcement, and a test that failed there.
    chat = tests["contract.chat"]["metrics"]["fields"]
    chat["service_tier"] = "string"
    del chat["choices[].message.refusal"]
    tests["contract.error_bad_value"]["metrics"]["behaviour"]["param"] = None
    tests["contract.chat_stream"]["metrics"]["behaviour"]["events"] = "content*,finish,usage,[DONE]"
    tests["contract.client_errors"]["status"] = "failed"
    tests["contract.client_errors"]["error"] = "openai client: BadRequestError.param is None"
    a = write(reports["dir"], "mock2.json", reports["mock"])
    b = write(reports["dir"], "real.json", real)

    result = CliRunner().invoke(app, ["drift", a, b, "--output", "json"])
    assert result.exit_code == 1, result.output
    out = orjson.loads(result.output)
    found = {(i["test"], i["kind"], i["key"]): (i["mock"], i["real"]) for i in out["drift"]}
    assert found == {
        ("contract.chat", "field", "service_tier"): (ABSENT, "string"),
        ("contract.chat", "field", "choices[].message.refusal"): ("null", ABSENT),
        ("contract.error_bad_value", "behaviour", "param"): ("temperature", None),
        ("contract.chat_stream", "behaviour", "events"): (
            "role,content*,finish,usage,[DONE]",
            "content*,finish,usage,[DONE]",
        ),
        ("contract.client_errors", "status", "status"): (
            "passed",
            "failed: openai client: BadRequestError.param is None",
        ),
    }
    assert out["compared_tests"] == 16


def test_timings_are_not_drift(reports: dict[str, Any]) -> None:
    real = copy.deepcopy(reports["mock"])
    for t in real["tests"]:
        t["duration"] = 99.0
        if "ttft_ms" in (t.get("metrics") or {}):
            t["metrics"]["ttft_ms"] = 1234.5
    mock = {t["name"]: t for t in reports["mock"]["tests"]}
    assert compare(mock, {t["name"]: t for t in real["tests"]}).items == []


def test_a_test_missing_on_one_side_is_drift(reports: dict[str, Any]) -> None:
    mock = {t["name"]: t for t in reports["mock"]["tests"]}
    real = {k: v for k, v in mock.items() if k != "contract.completion_stream"}
    items = compare(mock, real).items
    assert [(i.test, i.kind, i.mock, i.real) for i in items] == [
        ("contract.completion_stream", "test", True, False)
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        (b"{not json", "not JSON"),
        (b'{"summary": {}}', "not a hybridgate check report"),
        (b'{"tests": [{"name": "smoke.health", "status": "passed"}]}', "no contract tests"),
    ],
)
def test_bad_input_exits_3_with_a_hint(
    tmp_path: Path, reports: dict[str, Any], content: bytes | None, message: str
) -> None:
    good = write(tmp_path, "good.json", reports["mock"])
    bad = tmp_path / "bad.json"
    if content is not None:
        bad.write_bytes(content)
    result = CliRunner().invoke(app, ["drift", good, str(bad)])
    assert result.exit_code == 3, result.output
    text = " ".join(result.output.split())
    assert message in text
    assert "--suite contract" in text or "cannot read" in text
    with pytest.raises(Exception, match=message):
        load_report(bad)
