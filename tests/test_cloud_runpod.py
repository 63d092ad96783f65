"""The gateway's RunPod provider against `hybridgate mock-runpod`: GPU-type and data-centre fallback,
resume failures, escaping of everything sent, and every failure as a named CloudError."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from hybridgate.cloud import (
    CloudAuthError,
    CloudCapacityError,
    CloudInputError,
    CloudMalformedError,
    CloudResumeError,
    CloudUnavailableError,
    PodSpec,
    PodStatus,
)
from hybridgate.cloud.runpod import RunPodProvider, create_mutation, gql_string
from hybridgate.testing.mocks.runpod import NO_CAPACITY, parse_operation, start_mock_runpod
from hybridgate.testing.procs import Proc, free_port

KEY = "rp-test-key"
A, B = "NVIDIA GeForce RTX 4090", "NVIDIA L4"


@pytest.fixture(scope="module")
def mock() -> Iterator[Proc]:
    proc = start_mock_runpod(api_key=KEY, provision_polls=1, no_servers=True)
    yield proc
    proc.stop()


def configure(mock: Proc, **faults: Any) -> None:
    httpx.post(mock.url + "/_mock/config", json=faults).raise_for_status()


def mock_pod(mock: Proc, pod_id: str) -> dict[str, Any]:
    pods = httpx.get(mock.url + "/_mock/pods").json()["pods"]
    return next(p for p in pods if p["id"] == pod_id)


@pytest.fixture
async def rp(mock: Proc) -> AsyncIterator[RunPodProvider]:
    p = RunPodProvider(KEY, base_url=mock.url)
    yield p
    await p.close()
    configure(mock, no_capacity=[], resume_fails=False, html_502=0, null_data=0)


def spec(**kw: Any) -> PodSpec:
    base: dict[str, Any] = {"name": "hg-test", "image": "vllm/vllm-openai:latest", "gpu_types": (A, B)}
    return PodSpec(**{**base, **kw})


async def test_gpu_types_and_data_centres_are_tried_in_order(rp: RunPodProvider, mock: Proc) -> None:
    configure(mock, no_capacity=[A, "US-TX-3"])
    notes: list[str] = []
    info = await rp.launch(spec(data_centers=("US-TX-3", "EU-RO-1")), notes=notes)
    assert mock_pod(mock, info.id)["gpuTypeId"] == B
    assert mock_pod(mock, info.id)["dataCenterId"] == "EU-RO-1"
    # A in both data centres (A has none anywhere), then B in US-TX-3, then B in EU-RO-1 worked
    assert [n.split(":")[0] for n in notes] == [
        f"no capacity for {A} in US-TX-3",
        f"no capacity for {A} in EU-RO-1",
        f"no capacity for {B} in US-TX-3",
    ]
    assert NO_CAPACITY in notes[0]
    await rp.terminate(info.id)


async def test_no_capacity_anywhere_is_a_capacity_error_naming_what_was_tried(
    rp: RunPodProvider, mock: Proc
) -> None:
    configure(mock, no_capacity=["all"])
    with pytest.raises(CloudCapacityError) as e:
        await rp.launch(spec())
    assert A in e.value.message and B in e.value.message and e.value.retryable


async def test_lifecycle_endpoint_and_cost(rp: RunPodProvider, mock: Proc) -> None:
    info = await rp.launch(spec(gpu_types=(B,)))
    assert info.status is PodStatus.RUNNING and info.endpoint is None
    s1 = await rp.status(info.id)
    assert s1 is not None and s1.endpoint is None  # runtime null: the image is still being pulled
    s2 = await rp.status(info.id)
    assert s2 is not None and s2.endpoint is not None and s2.endpoint.startswith("http://127.0.0.1:")
    assert s2.cost_per_hr == 0.43 and rp.cost(s2) == 0.43 and s2.gpu == "L4"
    assert info.id in [p.id for p in await rp.list()]
    await rp.stop(info.id)
    s3 = await rp.status(info.id)
    assert s3 is not None and s3.status is PodStatus.STOPPED and s3.endpoint is None and s3.cost_per_hr == 0
    s4 = await rp.start(info.id)
    assert s4.status is PodStatus.RUNNING
    await rp.terminate(info.id)
    assert await rp.status(info.id) is None
    await rp.terminate(info.id)  # already gone: not an error


async def test_resume_without_free_gpu_is_a_resume_error(rp: RunPodProvider, mock: Proc) -> None:
    info = await rp.launch(spec())
    await rp.stop(info.id)
    configure(mock, resume_fails=True)
    with pytest.raises(CloudResumeError, match="not enough free GPUs"):
        await rp.start(info.id)
    await rp.terminate(info.id)


async def test_every_string_sent_arrives_exactly_as_given(rp: RunPodProvider, mock: Proc) -> None:
    hostile = 'v"q\\ \n}) { id } mutation { podTerminate(input: {podId: "x"}) } é 🚀'
    info = await rp.launch(spec(env={"K": hostile, "MODEL": "m"}, docker_args=hostile, image='img:"1"'))
    pod = mock_pod(mock, info.id)
    assert pod["env"] == {"K": hostile, "MODEL": "m"}
    assert pod["desiredStatus"] == "RUNNING"
    await rp.terminate(info.id)


def test_the_mutation_text_parses_back_to_the_values() -> None:
    hostile = '"\\\n\t\u0000é🚀'
    text = create_mutation(spec(env={"K": hostile}, docker_args=hostile), A, None)
    op, args, _ = parse_operation(text)
    assert op == "podFindAndDeployOnDemand"
    assert args["input"]["dockerArgs"] == hostile and args["input"]["env"] == [{"key": "K", "value": hostile}]
    assert args["input"]["dataCenterId"] is None
    assert gql_string('a"b') == '"a\\"b"'


@pytest.mark.parametrize(
    ("kw", "what"),
    [
        ({"name": 'bad"name'}, "not a valid name"),
        ({"env": {"BAD KEY": "v"}}, "environment variable name"),
        ({"cloud_type": "SECURE } mutation {"}, "cloud_type"),
        ({"data_centers": ('US"TX',)}, "data centre"),
        ({"gpu_count": 0}, "gpu_count"),
        ({"gpu_types": ()}, "at least one GPU type"),
        ({"spot": True, "bid_per_gpu": -1.0}, "bid_per_gpu"),
        ({"spot": True, "bid_per_gpu": float("nan")}, "bid_per_gpu"),
    ],
)
async def test_bad_values_are_refused_before_anything_is_sent(
    rp: RunPodProvider, kw: dict[str, Any], what: str
) -> None:
    with pytest.raises(CloudInputError, match=what):
        await rp.launch(spec(**kw))


async def test_a_pod_id_is_checked(rp: RunPodProvider) -> None:
    with pytest.raises(CloudInputError, match="not a RunPod pod id"):
        await rp.status('x" } }')


async def test_html_502_is_named_and_reads_retry_once(rp: RunPodProvider, mock: Proc) -> None:
    configure(mock, html_502=1)
    assert isinstance(await rp.list(), list)  # one retry for a read
    configure(mock, html_502=2)
    with pytest.raises(CloudUnavailableError) as e:
        await rp.list()
    assert "HTTP 502 with an HTML page" in e.value.message and "Bad gateway" in e.value.message
    configure(mock, html_502=1)
    with pytest.raises(CloudUnavailableError):
        await rp.launch(spec())  # a write is never retried (it may have happened)
    configure(mock, html_502=0)


async def test_answer_without_data_is_named(rp: RunPodProvider, mock: Proc) -> None:
    configure(mock, null_data=1)
    with pytest.raises(CloudUnavailableError, match="without data"):
        await rp.stop("abc123")


async def test_keys(mock: Proc) -> None:
    wrong = RunPodProvider("wrong", base_url=mock.url)
    none = RunPodProvider(None, base_url=mock.url)
    try:
        with pytest.raises(CloudAuthError, match="HTTP 401"):
            await wrong.list()
        with pytest.raises(CloudAuthError, match="no RunPod API key"):
            await none.list()
    finally:
        await wrong.close()
        await none.close()


async def test_unreachable_api_is_named() -> None:
    p = RunPodProvider(KEY, base_url=f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(CloudUnavailableError, match="could not be reached"):
            await p.list()
    finally:
        await p.close()


async def test_json_of_the_wrong_shape_is_malformed(monkeypatch: pytest.MonkeyPatch) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"data": {"pod": {"costPerHr": 1}}})

    p = RunPodProvider(KEY, base_url="http://runpod.test")
    p._client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    try:
        with pytest.raises(CloudMalformedError, match="no id"):
            await p.status("abc")
    finally:
        await p.close()


async def test_spot_pods_bid_the_minimum_or_what_is_given(rp: RunPodProvider, mock: Proc) -> None:
    minimum = await rp.minimum_bid(B)
    assert minimum is not None and 0 < minimum < 0.43  # the mock's L4: on-demand 0.43
    info = await rp.launch(spec(gpu_types=(B,), spot=True))
    pod = mock_pod(mock, info.id)
    assert pod["interruptible"] and pod["costPerHr"] == pytest.approx(minimum)
    assert info.cost_per_hr == pytest.approx(minimum)
    await rp.terminate(info.id)
    info = await rp.launch(spec(gpu_types=(B,), spot=True, bid_per_gpu=0.3))
    assert mock_pod(mock, info.id)["costPerHr"] == pytest.approx(0.3)
    await rp.terminate(info.id)
    # a bid under the minimum: RunPod's no-capacity answer, so the next GPU type is tried
    notes: list[str] = []
    with pytest.raises(CloudCapacityError, match="no capacity"):
        await rp.launch(spec(gpu_types=(B,), spot=True, bid_per_gpu=0.01), notes=notes)
    assert "no capacity for NVIDIA L4" in notes[0]


def test_the_spot_mutation_text_parses_back_to_the_values() -> None:
    op, args, _ = parse_operation(create_mutation(spec(spot=True), A, "EU-RO-1", bid_per_gpu=0.35))
    assert op == "podRentInterruptable"
    assert args["input"]["bidPerGpu"] == 0.35 and args["input"]["gpuTypeId"] == A
