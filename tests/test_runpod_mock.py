"""`hybridgate mock-runpod` checked with RunPod's official SDK (runpod 1.12.0, pinned) as the client.

The SDK reads RUNPOD_API_BASE_URL on every call and its key from ~/.runpod/config.toml at import, so it
is imported with HOME pointing at an empty temporary directory, and its key set by hand.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from hybridgate.testing.mocks.runpod import NO_CAPACITY, RESUME_NO_GPU, start_mock_runpod
from hybridgate.testing.procs import Proc

KEY = "rp-test-key"
GPU = "NVIDIA GeForce RTX 4090"


@pytest.fixture(scope="module")
def mock() -> Iterator[Proc]:
    proc = start_mock_runpod(api_key=KEY, provision_polls=1, no_servers=True)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def runpod(mock: Proc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    saved = {k: os.environ.get(k) for k in ("HOME", "RUNPOD_API_BASE_URL")}
    os.environ["HOME"] = str(tmp_path_factory.mktemp("home"))
    os.environ["RUNPOD_API_BASE_URL"] = mock.url
    sdk = importlib.import_module("runpod")
    sdk.api_key = KEY
    yield sdk
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def configure(mock: Proc, **faults: Any) -> dict[str, Any]:
    r = httpx.post(mock.url + "/_mock/config", json=faults)
    r.raise_for_status()
    out: dict[str, Any] = r.json()
    return out


@pytest.fixture(autouse=True)
def _reset(mock: Proc) -> Iterator[None]:
    yield
    configure(mock, no_capacity=[], resume_fails=False, html_502=0, null_data=0)


def test_the_sdk_pinned_is_1_12_0(runpod: Any) -> None:
    from importlib.metadata import version

    assert version("runpod") == "1.12.0", "the mock is checked against runpod 1.12.0; re-check it for another"


def test_create_get_list_stop_resume_terminate(runpod: Any, mock: Proc) -> None:
    pod = runpod.create_pod(
        "hg-test",
        "vllm/vllm-openai:latest",
        GPU,
        cloud_type="SECURE",
        env={"MODEL": "Qwen/Qwen2.5-0.5B", "HF_TOKEN": "x"},
        ports="8000/http,22/tcp",
    )
    assert pod["imageName"] == "vllm/vllm-openai:latest"
    assert sorted(pod["env"]) == ["HF_TOKEN=x", "MODEL=Qwen/Qwen2.5-0.5B"]
    pid = pod["id"]
    first = runpod.get_pod(pid)
    assert first["desiredStatus"] == "RUNNING"
    assert first["costPerHr"] == 0.69
    second = runpod.get_pod(pid)  # provision_polls=1: the runtime appears on the second read
    assert first["runtime"] is None and second["runtime"] is not None
    assert second["runtime"]["ports"][0]["privatePort"] == 8000
    assert pid in [p["id"] for p in runpod.get_pods()]
    stopped = runpod.stop_pod(pid)
    assert stopped == {"id": pid, "desiredStatus": "EXITED"}
    after = runpod.get_pod(pid)
    assert after["desiredStatus"] == "EXITED" and after["costPerHr"] == 0.0 and after["runtime"] is None
    assert runpod.resume_pod(pid, 1)["desiredStatus"] == "RUNNING"
    assert runpod.terminate_pod(pid) is None
    assert runpod.get_pod(pid) is None
    assert pid not in [p["id"] for p in runpod.get_pods()]


def test_no_capacity_is_runpods_own_error(runpod: Any, mock: Proc) -> None:
    configure(mock, no_capacity=[GPU])
    with pytest.raises(runpod.error.QueryError) as e:
        runpod.create_pod("hg-test", "img", GPU)
    assert str(e.value) == NO_CAPACITY
    # another GPU type still has capacity
    assert runpod.create_pod("hg-test", "img", "NVIDIA L4")["id"]


def test_resume_without_a_free_gpu_on_the_host(runpod: Any, mock: Proc) -> None:
    pid = runpod.create_pod("hg-test", "img", GPU)["id"]
    runpod.stop_pod(pid)
    configure(mock, resume_fails=True)
    with pytest.raises(runpod.error.QueryError) as e:
        runpod.resume_pod(pid, 1)
    assert str(e.value) == RESUME_NO_GPU
    runpod.terminate_pod(pid)


def test_unknown_gpu_type_is_refused_by_the_sdks_gpu_lookup(runpod: Any) -> None:
    with pytest.raises(ValueError, match="No GPU found"):
        runpod.create_pod("hg-test", "img", "NVIDIA H9000")


def test_wrong_key_is_an_authentication_error(runpod: Any) -> None:
    runpod.api_key = "wrong"
    try:
        with pytest.raises(runpod.error.AuthenticationError):
            runpod.get_pods()
    finally:
        runpod.api_key = KEY


def test_the_sdks_unescaped_quote_is_a_graphql_syntax_error(runpod: Any) -> None:
    """The SDK pastes names into the query unescaped: a GraphQL server refuses the query, as the mock does."""
    with pytest.raises(runpod.error.QueryError, match="Syntax Error"):
        runpod.create_pod('bad"name', "img", GPU)


def test_html_502_escapes_the_sdk_as_a_json_error(runpod: Any, mock: Proc) -> None:
    """What a Cloudflare 502 does to the SDK (not a RunPodError): why the gateway has its own client."""
    configure(mock, html_502=1)
    requests = sys.modules["requests"]
    with pytest.raises(requests.exceptions.JSONDecodeError):
        runpod.get_pods()
