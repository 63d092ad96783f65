"""`hybridgate check` and `hybridgate wait` against real processes: mock servers and gateways on loopback."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from hybridgate.cli import app
from hybridgate.testing.check import CheckOptions, parse_duration, run_check
from hybridgate.testing.check._canary import is_correct
from hybridgate.testing.check._cases import percentile
from hybridgate.testing.check._context import CheckFailed, Context, TargetUnreachable, guard
from hybridgate.testing.check._sse import StreamChecker, iter_sse
from hybridgate.testing.procs import Proc, free_port, start_gateway, start_mock_server, wait_backend_ready

SUMMARY_KEYS = {"total", "passed", "failed", "skipped", "duration_seconds"}
LOAD_KEYS = {"requests_per_second", "p50_latency_ms", "p95_latency_ms", "p99_latency_ms", "error_rate"}


def hybridgate(
    *args: str, timeout: float = 180, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The real command, without the caller's own OpenAI variables (which `check` reads) unless given."""
    base = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    return subprocess.run(
        [sys.executable, "-m", "hybridgate", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**base, **(env or {})},
    )


def check_json(target: str, suite: str, *extra: str) -> tuple[int, dict[str, Any]]:
    p = hybridgate("check", "--target", target, "--suite", suite, "--output", "json", *extra)
    assert p.stdout, f"no JSON on stdout (exit {p.returncode}): {p.stderr[-2000:]}"
    return p.returncode, orjson.loads(p.stdout)


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in report["tests"]}


def assert_report_shape(report: dict[str, Any], target: str) -> None:
    assert set(report) <= {"summary", "tests", "load_test", "target", "started_at"}
    assert {"summary", "tests", "target", "started_at"} <= set(report)
    assert set(report["summary"]) == SUMMARY_KEYS
    s = report["summary"]
    assert s["total"] == len(report["tests"]) == s["passed"] + s["failed"] + s["skipped"]
    for t in report["tests"]:
        assert {"name", "status", "duration"} <= set(t) <= {"name", "status", "duration", "error", "metrics"}
        assert t["status"] in ("passed", "failed", "skipped")
    assert report["target"] == target


@pytest.fixture(scope="module")
def mock() -> Iterator[Proc]:
    p = start_mock_server()
    yield p
    p.stop()


@pytest.fixture(scope="module")
def gateway_over_mocks(mock: Proc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """A real gateway whose backends are openai-kind, pointing at two real mock servers."""
    second = start_mock_server()
    cfg = {
        "backends": [
            {
                "name": "primary",
                "kind": "openai",
                "base_url": mock.base_url,
                "models": {"chat": "mock"},
                "priority": 1,
                "price": {"free": True},
            },
            {
                "name": "secondary",
                "kind": "openai",
                "base_url": second.base_url,
                "models": {"chat": "mock"},
                "priority": 2,
                "price": {"free": True},
            },
        ]
    }
    gw = start_gateway(cfg, workdir=tmp_path_factory.mktemp("gw"))
    yield gw
    gw.stop()
    second.stop()


# --- every suite against real servers -----------------------------------------------------------------------
def test_smoke_contract_and_canary_pass_against_a_bare_mock_server(mock: Proc) -> None:
    code, report = check_json(mock.base_url, "smoke,contract,canary")
    assert code == 0, report
    assert_report_shape(report, mock.base_url)
    tests = by_name(report)
    assert report["summary"]["failed"] == 0 and report["summary"]["skipped"] == 0
    assert {n.split(".")[0] for n in tests} == {"smoke", "contract", "canary"}
    assert tests["canary.capital_of_france"]["metrics"]["outcome"] == "correct"
    stream = tests["contract.chat_stream"]["metrics"]
    assert stream["behaviour"]["events"] == "role,content*,finish,usage,[DONE]"
    assert stream["fields"]["usage_chunk.usage.total_tokens"] == "integer"
    assert (
        tests["contract.chat_stream_without_usage"]["metrics"]["behaviour"]["events"]
        == "role,content*,finish,[DONE]"
    )
    assert (
        tests["contract.completion_stream"]["metrics"]["behaviour"]["events"]
        == "content*,finish,usage,[DONE]"
    )
    assert tests["contract.error_bad_value"]["metrics"]["behaviour"]["param"] == "temperature"
    assert tests["contract.error_missing_field"]["metrics"]["behaviour"]["param"] == "messages"
    assert tests["contract.error_unknown_model"]["metrics"]["behaviour"]["status"] == 404
    assert tests["smoke.models"]["metrics"]["models"] == ["mock"]


def test_smoke_contract_and_canary_pass_against_the_gateway_in_front_of_mock_servers(
    gateway_over_mocks: Proc,
) -> None:
    code, report = check_json(gateway_over_mocks.base_url, "smoke,contract,canary")
    assert code == 0, [t for t in report["tests"] if t["status"] != "passed"]
    assert_report_shape(report, gateway_over_mocks.base_url)
    assert report["summary"]["passed"] == report["summary"]["total"] == 22
    assert by_name(report)["smoke.models"]["metrics"]["models"] == ["chat"]


def test_smoke_and_canary_pass_against_the_gateway_on_its_embedded_default(tmp_path: Path) -> None:
    gw = start_gateway(None, workdir=tmp_path)
    try:
        code, report = check_json(gw.base_url, "smoke,canary", "--model", "mock")
    finally:
        gw.stop()
    assert code == 0, [t for t in report["tests"] if t["status"] != "passed"]
    assert by_name(report)["canary.capital_of_france"]["metrics"]["answer"] == "Paris"


@pytest.mark.local_model
@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama_cpp is not importable")
def test_smoke_and_canary_pass_against_the_local_gemma_model(tmp_path: Path) -> None:
    gw = start_gateway(None, workdir=tmp_path, timeout=180)
    try:
        wait_backend_ready(gw.url, "local", timeout=300)  # the model loads in the background after start
        code, report = check_json(
            gw.base_url,
            "smoke,canary",
            "--model",
            "gemma-3-270m",
            "--request-timeout",
            "300",
            "--max-p95-ms",
            "60000",
        )
    finally:
        gw.stop()
    assert code == 0, [t for t in report["tests"] if t["status"] != "passed"]
    assert by_name(report)["canary.capital_of_france"]["metrics"]["outcome"] == "correct"


def test_check_reads_the_openai_variables_that_make_run_prints(tmp_path: Path) -> None:
    # `make run` is `serve --first-key`: it creates a key, so every call needs one, and prints two exports.
    cfg = {
        "backends": [{"name": "mock", "kind": "mock", "models": {"mock": "mock"}, "price": {"free": True}}]
    }
    gw = start_gateway(cfg, workdir=tmp_path, extra_args=["--first-key"])
    try:
        exports = dict(re.findall(r"export (OPENAI_API_KEY|OPENAI_BASE_URL)=(\S+)", gw.log()))
        assert set(exports) == {"OPENAI_API_KEY", "OPENAI_BASE_URL"}, gw.log()
        p = hybridgate("check", "--suite", "smoke,canary", "--output", "json", env=exports)
        without = hybridgate(
            "check", "--suite", "smoke", "--output", "json", env={**exports, "OPENAI_API_KEY": ""}
        )
    finally:
        gw.stop()
    report = orjson.loads(p.stdout)
    assert p.returncode == 0, [t for t in report["tests"] if t["status"] != "passed"]
    assert report["target"] == gw.base_url
    assert (
        without.returncode == 1 and "HTTP 401" in without.stdout
    )  # the key did the work, not an open gateway


def test_the_canary_says_when_the_model_under_test_is_a_mock(mock: Proc) -> None:
    code, report = check_json(mock.base_url, "smoke,canary")
    assert code == 0
    canary = by_name(report)["canary.capital_of_france"]["metrics"]
    assert canary["outcome"] == "correct" and canary["mock"] is True
    assert "'mock', is a mock" in canary["note"]
    assert by_name(report)["smoke.models"]["metrics"]["mock"] is True
    text = hybridgate("check", "--target", mock.base_url, "--suite", "canary")
    assert text.returncode == 0 and "is a mock" in " ".join(text.stdout.split())


def test_check_prefers_a_model_that_is_not_a_mock(mock: Proc, tmp_path: Path) -> None:
    cfg = {
        "backends": [
            {
                "name": "mock",
                "kind": "mock",
                "models": {"mock": "mock"},
                "priority": 1,
                "price": {"free": True},
            },
            {
                "name": "remote",
                "kind": "openai",
                "base_url": mock.base_url,
                "models": {"remote-model": "mock"},
                "priority": 2,
                "price": {"free": True},
            },
        ]
    }
    gw = start_gateway(cfg, workdir=tmp_path)
    try:
        code, report = check_json(gw.base_url, "smoke,canary")
        forced = check_json(gw.base_url, "canary", "--model", "mock")[1]
    finally:
        gw.stop()
    assert code == 0, [t for t in report["tests"] if t["status"] != "passed"]
    tests = by_name(report)
    assert tests["smoke.models"]["metrics"]["models"] == ["mock", "remote-model"]
    assert tests["smoke.models"]["metrics"]["model"] == "remote-model"
    assert tests["canary.capital_of_france"]["metrics"]["model"] == "remote-model"
    assert "mock" not in tests["canary.capital_of_france"]["metrics"]
    # Asked for by name, the gateway's mock backend is tested, and the report says what it is.
    assert by_name(forced)["canary.capital_of_france"]["metrics"]["mock"] is True


class _Gateway(BaseHTTPRequestHandler):
    """What a gateway lists and says of its backends: a mock, a local model that cannot answer yet, and
    (when `paid_routable`) a routable paid model."""

    paid_routable = True

    def do_GET(self) -> None:
        backends = [
            {"name": "mock", "kind": "mock", "models": ["mock"], "routable": True},
            # As a gateway without the local extra says it today: failed, and yet routable.
            {
                "name": "local",
                "kind": "llamacpp",
                "models": ["gemma"],
                "routable": True,
                "lifecycle": "failed",
            },
            {"name": "paid", "kind": "openai", "models": ["gpt"], "routable": self.paid_routable},
        ]
        models = [
            {"id": m, "object": "model", "created": 0, "owned_by": "hybridgate"}
            for m in ("mock", "gemma", "gpt")
        ]
        body = {"/health/backends": {"backends": backends}, "/v1/models": {"object": "list", "data": models}}
        raw = orjson.dumps(body.get(self.path, {"status": "ok"}))
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize(("paid_routable", "chosen"), [(True, "gpt"), (False, "mock")])
def test_the_default_model_skips_mocks_and_models_that_cannot_answer_now(
    paid_routable: bool, chosen: str
) -> None:
    handler = type("Handler", (_Gateway,), {"paid_routable": paid_routable})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    ctx = Context(CheckOptions.create(f"http://127.0.0.1:{server.server_port}/v1"))
    try:
        assert ctx.model == chosen
        assert ctx.is_mock("mock") and not ctx.is_mock("gemma") and not ctx.is_mock("gpt")
    finally:
        ctx.close()
        server.shutdown()


# --- exit codes ---------------------------------------------------------------------------------------------
def test_an_unreachable_target_exits_2_and_fails_no_test(tmp_path: Path) -> None:
    target = f"http://127.0.0.1:{free_port()}/v1"
    out = tmp_path / "report.json"
    code, report = check_json(target, "all", "--json-file", str(out))
    assert code == 2
    assert_report_shape(report, target)
    assert report["summary"]["failed"] == 0
    assert report["summary"]["skipped"] == report["summary"]["total"] > 20
    assert all(
        "target unreachable" in t["error"] and t["metrics"]["outcome"] == "unreachable"
        for t in report["tests"]
    )
    assert "load_test" not in report
    assert orjson.loads(out.read_bytes())["summary"] == report["summary"]


def test_a_target_failing_every_request_exits_1_not_2() -> None:
    failing = start_mock_server(fail_rate=1)
    try:
        code, report = check_json(failing.base_url, "smoke,canary")
    finally:
        failing.stop()
    assert code == 1
    tests = by_name(report)
    assert tests["smoke.health"]["status"] == "passed"  # up, but answering 500s: a failure, not unreachable
    assert tests["smoke.chat_completion"]["status"] == "failed"
    assert "HTTP 500" in tests["smoke.chat_completion"]["error"]
    assert tests["canary.capital_of_france"]["metrics"] == {
        "outcome": "error",
        "status": 500,
        "latency_ms": tests["canary.capital_of_france"]["metrics"]["latency_ms"],
    }


def test_a_bad_suite_exits_3_from_the_real_command() -> None:
    p = hybridgate("check", "--target", "http://127.0.0.1:9/v1", "--suite", "bogus")
    assert p.returncode == 3
    assert "unknown suite 'bogus'" in p.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target", "http://127.0.0.1:9/v1", "--suite", "smoke,nope"], "unknown suite 'nope'"),
        (["--target", "http://127.0.0.1:9/v1", "--duration", "soon"], "--duration"),
        (["--target", "http://127.0.0.1:9/v1", "--users", "0"], "--users"),
        (["--target", "http://127.0.0.1:9/v1", "--users", "many"], "Invalid value for '--users'"),
        (["--target", "http://127.0.0.1:9/v1", "--max-error-rate", "2"], "--max-error-rate"),
        (["--target", "http://127.0.0.1:9/v1", "--output", "yaml"], "--output"),
        (["--target", "ftp://127.0.0.1/v1"], "not an http(s) URL"),
        ([], "--target"),
    ],
)
def test_bad_arguments_exit_3_never_2(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["check", *args], env={"OPENAI_BASE_URL": None, "OPENAI_API_KEY": None})
    assert result.exit_code == 3, result.output
    assert message in " ".join(result.output.replace("│", " ").split())  # typer's error box wraps lines


def test_a_stream_cut_mid_way_fails_the_contract_suite() -> None:
    dropping = start_mock_server(drop_mid_stream=True)
    try:
        code, report = check_json(dropping.base_url, "contract")
    finally:
        dropping.stop()
    assert code == 1
    tests = by_name(report)
    assert tests["contract.chat"]["status"] == "passed"
    stream = tests["contract.chat_stream"]
    assert stream["status"] == "failed"
    assert "without data: [DONE]" in stream["error"] or "broke mid-stream" in stream["error"]


# --- canary: three distinct outcomes ------------------------------------------------------------------------
class _WrongAnswers(BaseHTTPRequestHandler):
    """An OpenAI-shaped server whose model is confidently wrong."""

    def _send(self, status: int, body: dict[str, Any]) -> None:
        raw = orjson.dumps(body)
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_GET(self) -> None:
        self._send(
            200,
            {"status": "ok"}
            if self.path == "/health"
            else {
                "object": "list",
                "data": [{"id": "wrong", "object": "model", "created": 0, "owned_by": "t"}],
            },
        )

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self._send(
            200,
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 0,
                "model": "wrong",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "London."},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
            },
        )

    def log_message(self, *args: Any) -> None:
        pass


def test_the_canary_tells_unreachable_wrong_and_correct_apart(mock: Proc) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _WrongAnswers)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        wrong = run_check(CheckOptions.create(f"http://127.0.0.1:{server.server_port}/v1", "canary"))
    finally:
        server.shutdown()
    correct = run_check(CheckOptions.create(mock.base_url, "canary"))
    gone = run_check(CheckOptions.create(f"http://127.0.0.1:{free_port()}/v1", "canary"))
    outcomes = [
        (r.exit_code, r.tests[0].status, (r.tests[0].metrics or {})["outcome"])
        for r in (correct, wrong, gone)
    ]
    assert outcomes == [
        (0, "passed", "correct"),
        (1, "failed", "wrong_answer"),
        (2, "skipped", "unreachable"),
    ]
    assert wrong.tests[0].metrics["answer"] == "London."  # type: ignore[index]


@pytest.mark.parametrize(
    ("answer", "ok"),
    [
        ("Paris", True),
        ("paris.", True),
        ("The capital is PARIS", True),
        ("London", False),
        ("", False),
        ("Par is", False),
    ],
)
def test_the_canary_accepts_paris_in_any_case_and_nothing_else(answer: str, ok: bool) -> None:
    assert is_correct(answer) is ok


# --- load ---------------------------------------------------------------------------------------------------
def test_the_load_suite_measures_a_50ms_mock_within_range() -> None:
    slow = start_mock_server(latency_ms=50)
    try:
        code, report = check_json(
            slow.base_url, "load", "--duration", "3s", "--users", "3", "--max-error-rate", "0"
        )
    finally:
        slow.stop()
    assert code == 0, report
    lt = report["load_test"]
    assert set(lt) == LOAD_KEYS
    assert 45 <= lt["p50_latency_ms"] <= 150
    assert lt["p50_latency_ms"] <= lt["p95_latency_ms"] <= lt["p99_latency_ms"]
    assert lt["error_rate"] == 0
    # 3 closed-loop users at >= 50 ms each cannot exceed 60 req/s; they should manage well over 5.
    assert 5 < lt["requests_per_second"] <= 60
    m = by_name(report)["load.chat"]["metrics"]
    assert 45 <= m["ttft_p50_ms"] <= 150
    assert m["streams_timed"] > 0 and m["requests"] > m["streams_timed"]


def test_the_load_suite_fails_over_the_p95_threshold() -> None:
    slow = start_mock_server(latency_ms=50)
    try:
        code, report = check_json(
            slow.base_url, "load", "--duration", "2s", "--users", "2", "--max-p95-ms", "10"
        )
    finally:
        slow.stop()
    assert code == 1
    assert "p95 latency" in by_name(report)["load.chat"]["error"]
    assert report["load_test"]["p95_latency_ms"] > 10


# --- wait ---------------------------------------------------------------------------------------------------
def test_wait_gives_up_with_2_on_a_dead_port() -> None:
    p = hybridgate("wait", "--url", f"http://127.0.0.1:{free_port()}/health", "--timeout", "1")
    assert p.returncode == 2
    assert "did not become healthy within 1s" in p.stderr


def test_wait_returns_0_once_a_late_server_answers() -> None:
    port = free_port()
    waiter = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hybridgate",
            "wait",
            "--url",
            f"http://127.0.0.1:{port}/health",
            "--timeout",
            "60s",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    server = start_mock_server(port=port)
    try:
        assert waiter.wait(timeout=60) == 0
    finally:
        server.stop()
        if waiter.poll() is None:
            waiter.kill()


def test_wait_refuses_a_bad_url_with_3() -> None:
    assert CliRunner().invoke(app, ["wait", "--url", "localhost:8080"]).exit_code == 3


# --- the parts, without a server ----------------------------------------------------------------------------
def _chunk(**choice: Any) -> str:
    return orjson.dumps(
        {
            "id": "c-1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "delta": {}, "finish_reason": None, **choice}],
        }
    ).decode()


_USAGE = orjson.dumps(
    {
        "id": "c-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
).decode()
_ROLE = _chunk(delta={"role": "assistant", "content": ""})
_TEXT = _chunk(delta={"content": "Hi"})
_STOP = _chunk(finish_reason="stop")


def test_a_well_ordered_stream_passes_event_by_event() -> None:
    c = StreamChecker("chat", include_usage=True)
    for data in (_ROLE, _TEXT, _TEXT, _STOP, _USAGE, "[DONE]"):
        c.feed(data)
    c.end()
    assert c.events == "role,content*,finish,usage,[DONE]"
    assert "".join(c.text) == "HiHi"


@pytest.mark.parametrize(
    ("events", "include_usage", "error"),
    [
        ([_TEXT], False, "does not announce role"),
        ([_ROLE, _TEXT, "[DONE]"], False, "before any chunk carried a finish_reason"),
        ([_ROLE, _STOP, _USAGE], False, "include_usage was not set"),
        ([_ROLE, _STOP, "[DONE]"], True, "without the usage chunk"),
        ([_ROLE, _STOP, _TEXT], False, "after the finish_reason"),
        ([_ROLE, _STOP, "[DONE]", _TEXT], False, "after [DONE]"),
        ([_ROLE, '{"error": {"message": "boom"}}'], False, "error event"),
        ([_ROLE, _TEXT.replace('"c-1"', '"c-2"')], False, "different ids"),
        ([_ROLE, _TEXT.replace('"created":1', '"created":"1"')], False, "'created' is string"),
    ],
)
def test_the_stream_checker_stops_at_the_first_bad_event(
    events: list[str], include_usage: bool, error: str
) -> None:
    c = StreamChecker("chat", include_usage)
    with pytest.raises(CheckFailed, match=error.replace("[", r"\[").replace("]", r"\]")):
        for data in events:
            c.feed(data)


def test_a_refused_connection_through_the_openai_client_is_unreachable_not_a_failure() -> None:
    ctx = Context(CheckOptions.create(f"http://127.0.0.1:{free_port()}/v1", "contract"))
    try:
        with pytest.raises(TargetUnreachable), guard(ctx.root):
            ctx.openai.models.list()
    finally:
        ctx.close()


def test_a_stream_without_done_is_truncated() -> None:
    c = StreamChecker("chat", False)
    for data in (_ROLE, _TEXT, _STOP):
        c.feed(data)
    with pytest.raises(CheckFailed, match="truncated"):
        c.end()


def test_sse_events_are_split_on_blank_lines_and_comments_are_skipped() -> None:
    lines = ["data: a", "", ": x-hybridgate-cost-usd=0", "", "data: b1", "data: b2", "", "data: [DONE]", ""]
    assert list(iter_sse(lines)) == ["a", "b1\nb2", "[DONE]"]


@pytest.mark.parametrize(
    ("text", "seconds"), [("30", 30), ("30s", 30), ("1m30s", 90), ("500ms", 0.5), ("2h", 7200)]
)
def test_durations_parse(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 0.5), percentile(values, 0.95), percentile(values, 0.99)) == (50, 95, 99)
    assert percentile([], 0.5) == 0
