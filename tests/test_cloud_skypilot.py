"""SDK contract: the real SkyPilot SDK (skypilot==0.14.1 in .venv-sky, driven through the provider's
subprocess) against `hybridgate mock-skypilot` (a real process; each UP cluster backed by a real
mock-server). These prove hybridgate speaks the SDK correctly (the task it sends, the calls, the typed
errors); they do not prove provisioning on a cloud (see `hybridgate check --suite cloud`)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import yaml

import _accounts
from hybridgate.cloud import (
    CloudCapacityError,
    CloudNotFoundError,
    CloudProviderError,
    CloudResumeError,
    CloudSetupError,
    CloudUnavailableError,
    PodSpec,
    PodStatus,
)
from hybridgate.cloud.skypilot import PINNED, RequestJournal, SkyPilotProvider, SkyPilotSettings
from hybridgate.store import Store
from hybridgate.testing.mocks.skypilot import API_VERSION, VERSION, start_mock_skypilot
from hybridgate.testing.procs import Proc, free_port, wait_healthy

SKY_PYTHON = Path(__file__).resolve().parents[1] / ".venv-sky" / "bin" / "python"

# One event loop for the module: the shared provider keeps its SDK worker (`import sky` paid once).
pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.skypilot]

if not SKY_PYTHON.exists():
    if os.environ.get("HYBRIDGATE_REQUIRE_SKYPILOT") == "1":
        raise RuntimeError(f"{SKY_PYTHON} is missing: `make .venv-sky` creates it (make test does)")
    pytest.skip(
        f"{SKY_PYTHON} is missing: `make .venv-sky` creates it (make test does)", allow_module_level=True
    )


@pytest.fixture(scope="module")
def sky_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The SDK keeps state in ~/.sky: a temporary HOME, so tests never read or write the user's."""
    home = tmp_path_factory.mktemp("skyhome")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(home))
        mp.delenv("SKYPILOT_API_SERVER_ENDPOINT", raising=False)
        mp.delenv("HYBRIDGATE_SKYPILOT_PYTHON", raising=False)
        yield home


@pytest.fixture(scope="module")
def fake(sky_home: Path) -> Iterator[Proc]:
    proc = start_mock_skypilot(launch_s=0.3)
    yield proc
    proc.stop()


def configure(fake: Proc, **changes: Any) -> None:
    httpx.post(fake.url + "/_mock/config", json=changes).raise_for_status()


def clusters(fake: Proc) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in httpx.get(fake.url + "/_mock/clusters").json()["clusters"]}


def gone(fake: Proc) -> dict[str, float]:
    return dict(httpx.get(fake.url + "/_mock/clusters").json()["gone"])


def requests(fake: Proc) -> list[dict[str, Any]]:
    return list(httpx.get(fake.url + "/_mock/requests").json()["requests"])


def models(base_url: str, key: str | None) -> Any:
    """The model ids a server lists, or the HTTP status it refused with."""
    r = httpx.get(base_url + "/models", headers={"Authorization": f"Bearer {key}"} if key else {})
    return [m["id"] for m in r.json()["data"]] if r.status_code == 200 else r.status_code


def environ_of(pid: int) -> list[bytes]:
    return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")


def run_python(code: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()


def sent(fake: Proc, path: str, cluster: str) -> list[dict[str, Any]]:
    reqs = requests(fake)
    return [
        r["body"]
        for r in reqs
        if r["path"] == path and cluster in (r["body"].get("cluster_name"), r["body"].get("cluster"))
    ]


@pytest.fixture(autouse=True)
def _reset(fake: Proc) -> Iterator[None]:
    yield
    configure(fake, no_capacity=[], launch_s=0.3, minute_s=60)


_made: list[SkyPilotProvider] = []


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sky(fake: Proc) -> AsyncIterator[SkyPilotProvider]:
    """The provider most tests share (its settings are what they assert on)."""
    p = provider(fake, deadman_minutes=30, run="vllm serve $MODEL --port $PORT")
    yield p
    await p.close()


@pytest_asyncio.fixture(autouse=True, loop_scope="module")
async def _close_providers(sky: SkyPilotProvider) -> AsyncIterator[None]:
    yield
    while len(_made) > 1:
        await _made.pop().close()  # their SDK worker processes end


def provider(fake: Proc, **settings: Any) -> SkyPilotProvider:
    s = SkyPilotSettings(**{"python": str(SKY_PYTHON), "api_server": fake.url, "infra": "aws", **settings})
    return made(SkyPilotProvider(s, port=8000))


def made(p: SkyPilotProvider) -> SkyPilotProvider:
    _made.append(p)
    return p


def spec(name: str, *gpus: str) -> PodSpec:
    return PodSpec(
        name=name,
        image="",
        gpu_types=gpus,
        env={"MODEL": "m"},
        secrets={"HYBRIDGATE_REPLICA_API_KEY": "replica-key-1"},
    )


async def until_up(p: SkyPilotProvider, name: str, within_s: float = 60.0) -> Any:
    deadline = time.monotonic() + within_s
    while True:
        info = await p.status(name)
        if info is not None and info.endpoint:
            return info
        assert time.monotonic() < deadline, f"{name} not UP with an endpoint within {within_s}s: {info}"
        await asyncio.sleep(0.2)


async def test_the_fake_speaks_the_pinned_sdk_and_api_version(
    sky: SkyPilotProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fails loudly when the SDK is bumped: the fake's wire protocol is that of one SkyPilot version.
    And the SDK's worker gets no secret of the gateway's, and never starts an API server itself."""
    monkeypatch.setenv("HYBRIDGATE_MASTER_KEY", "sk-do-not-leak")
    info = await sky.info()
    (worker,) = sky._idle
    environ = environ_of(worker.pid)
    assert (
        b"SKYPILOT_DISABLE_LOCAL_API_SERVER=1" in environ
        and b"SKYPILOT_DISABLE_USAGE_COLLECTION=1" in environ
    )
    assert not any(b"sk-do-not-leak" in e for e in environ)
    assert info["client_version"] == PINNED == VERSION == "0.14.1", info
    assert info["client_api_version"] == API_VERSION == 62, info
    assert info["server_api_version"] == str(API_VERSION) and info["server_status"] == "healthy", info


async def test_launch_sends_the_task_and_a_spot_cluster_is_routed_then_torn_down_on_stop(
    fake: Proc, sky: SkyPilotProvider
) -> None:
    p = sky
    notes: list[str] = []
    info = await p.launch(spec("hg-ct-a", "T4", "L4"), notes=notes)
    assert info.id == "hg-ct-a" and info.status is PodStatus.RUNNING and info.endpoint is None
    assert p.pending["hg-ct-a"] and "T4:1 spot, then L4:1 spot, then T4:1 on-demand" in notes[0]

    # What the SDK sent: the task YAML and the launch options.
    (body,) = sent(fake, "/launch", "hg-ct-a")
    docs = [d for d in yaml.safe_load_all(body["task"]) if d]
    task = docs[-1]
    cands = task["resources"]["ordered"]
    assert [(c["accelerators"], c["use_spot"]) for c in cands] == [
        ({"T4": 1}, True),
        ({"L4": 1}, True),
        ({"T4": 1}, False),
        ({"L4": 1}, False),
    ]
    for c in cands:
        assert c["ports"] == ["8000"] and c["infra"] == "aws"
        assert c["autostop"] == {"idle_minutes": 30, "down": True, "wait_for": "none"}  # the dead-man
    assert task["run"] == "vllm serve $MODEL --port $PORT"
    assert task["envs"] == {"MODEL": "m", "PORT": "8000"}
    assert task["secrets"] == {"HYBRIDGATE_REPLICA_API_KEY": "replica-key-1"}
    assert body["cluster_name"] == "hg-ct-a" and body["retry_until_up"] is False
    assert body["env_vars"]["SKYPILOT_DISABLE_LOCAL_API_SERVER"] == "1"
    assert body["env_vars"]["SKYPILOT_DISABLE_USAGE_COLLECTION"] == "1"

    # Following the launch request (as a restarted gateway can, by id): it waits for the launch.
    assert await p.follow(p.pending["hg-ct-a"][0]) == {"job_id": 1}
    up = await until_up(p, "hg-ct-a")
    assert [i.name for i in await p.list() if i.name == "hg-ct-a"] == ["hg-ct-a"]
    assert "hg-ct-a" not in p.pending  # the launch request finished: forgotten
    assert up.gpu == "T4:1 spot" and up.data_center == "AWS/fake-region-1"
    # The endpoint is the cluster's model server (UP: the VM is; its server may still be starting); it
    # wants the secret as its key.
    wait_healthy(up.endpoint.removesuffix("/v1") + "/health", 30)
    assert models(up.endpoint, None) == 401
    assert models(up.endpoint, "replica-key-1") == ["m"]

    with pytest.raises(CloudProviderError, match=r"NotSupportedError: .*spot instances"):
        await p.call("stop", name="hg-ct-a")  # SkyPilot's own stop of a spot cluster: refused, typed
    await p.stop("hg-ct-a")  # spot: clouds cannot stop it, so the provider tears it down
    assert await p.status("hg-ct-a") is None
    assert "hg-ct-a" in gone(fake)
    assert sent(fake, "/down", "hg-ct-a") and len(sent(fake, "/stop", "hg-ct-a")) == 1  # only the one above
    with pytest.raises(CloudResumeError, match="no longer exists"):
        await p.start("hg-ct-a")


async def test_on_demand_fallback_stop_start_rearm_and_terminate(fake: Proc, sky: SkyPilotProvider) -> None:
    configure(fake, no_capacity=["spot"])
    p = sky
    await p.launch(spec("hg-ct-b", "T4"))
    up = await until_up(p, "hg-ct-b")
    assert up.gpu == "T4:1 on-demand"
    assert clusters(fake)["hg-ct-b"]["spot"] is False
    assert "no capacity for T4:1 (spot)" in clusters(fake)["hg-ct-b"]["events"]

    await p.heartbeat("hg-ct-b")  # the dead-man re-armed: cancelled, then set again
    autostops = [(b["idle_minutes"], b["wait_for"], b["down"]) for b in sent(fake, "/autostop", "hg-ct-b")]
    assert autostops == [(-1, None, False), (30, "none", True)]

    await p.stop("hg-ct-b")
    assert (await p.status("hg-ct-b")).status is PodStatus.STOPPED  # type: ignore[union-attr]
    assert sent(fake, "/stop", "hg-ct-b")
    await p.start("hg-ct-b")
    (start,) = sent(fake, "/start", "hg-ct-b")
    assert (start["idle_minutes_to_autostop"], start["wait_for"], start["down"]) == (30, "none", True)
    again = await until_up(p, "hg-ct-b")
    assert again.endpoint
    await p.terminate("hg-ct-b")
    assert await p.status("hg-ct-b") is None
    await p.terminate("hg-ct-b")  # already gone: not an error


async def test_typed_errors(fake: Proc, sky: SkyPilotProvider, tmp_path: Path) -> None:
    configure(fake, no_capacity=["all"])
    p = sky
    await p.launch(spec("hg-ct-c", "T4"))
    with pytest.raises(CloudCapacityError, match="ResourcesUnavailableError: Failed to provision"):
        await until_up(p, "hg-ct-c")
    assert "hg-ct-c" not in p.pending
    missing = [
        await asyncio.gather(call, return_exceptions=True)
        for call in (p.stop("hg-ct-nope"), p.start("hg-ct-nope"), p.call("down", name="hg-ct-nope"))
    ]
    missing = [m[0] for m in missing]
    assert isinstance(missing[0], CloudNotFoundError)
    assert isinstance(missing[1], CloudResumeError)
    assert isinstance(missing[2], CloudNotFoundError) and "does not exist" in missing[2].message

    closed = made(
        SkyPilotProvider(
            SkyPilotSettings(python=str(SKY_PYTHON), api_server=f"http://127.0.0.1:{free_port()}")
        )
    )
    nowhere = made(
        SkyPilotProvider(SkyPilotSettings(python=str(SKY_PYTHON)))
    )  # no endpoint: never starts one
    no_env = made(SkyPilotProvider(SkyPilotSettings(python=str(tmp_path / "none" / "python"))))
    errors = await asyncio.gather(closed.list(), nowhere.list(), no_env.list(), return_exceptions=True)
    assert isinstance(errors[0], CloudUnavailableError), errors[0]
    assert isinstance(errors[1], CloudSetupError) and "never starts one" in errors[1].message, errors[1]
    assert isinstance(errors[2], CloudSetupError) and "make .venv-sky" in errors[2].message, errors[2]


async def test_the_deadman_autostop_tears_down_a_cluster_nobody_rearms(
    fake: Proc, sky: SkyPilotProvider
) -> None:
    p = sky
    await p.launch(spec("hg-ct-d"))
    await until_up(p, "hg-ct-d")
    configure(fake, minute_s=0.02)  # 30 "minutes" in 0.6 s: the gateway crashed, nobody re-arms the timer
    deadline = time.monotonic() + 30
    while "hg-ct-d" in clusters(fake):
        assert time.monotonic() < deadline, "the dead-man timer did not fire"
        await asyncio.sleep(0.1)
    assert await p.status("hg-ct-d") is None


database = _accounts.database  # SQLite, and PostgreSQL when configured
pg_database = _accounts.pg_database


@pytest_asyncio.fixture(loop_scope="module")
async def store(database: str) -> AsyncIterator[Store]:
    s = Store(database)
    await s.open()
    yield s
    await s.close()


async def test_a_restarted_gateway_follows_and_cancels_the_requests_it_finds(
    fake: Proc, sky: SkyPilotProvider, store: Store
) -> None:
    configure(fake, launch_s=30)  # a launch that takes a while
    first = sky
    first.journal = RequestJournal(lambda: store.engine)
    try:
        await first.launch(spec("hg-ct-e"))
    finally:
        first.journal = None
    rid = first.pending.pop("hg-ct-e")[-1]  # this process "crashes": what it knew in memory is gone
    # A new gateway process: nothing in memory, the request id in the database.
    second = provider(fake)
    second.journal = RequestJournal(lambda: store.engine)
    info = await second.status("hg-ct-e")
    assert info is not None and info.status is PodStatus.RUNNING and info.endpoint is None
    assert second.pending == {"hg-ct-e": [rid]}
    await second.terminate("hg-ct-e")  # cancels the launch, then downs the cluster
    reqs = requests(fake)
    assert [
        r["body"]["request_ids"]
        for r in reqs
        if r["path"] == "/api_cancel" and rid in r["body"]["request_ids"]
    ] == [[rid]]
    assert await RequestJournal(lambda: store.engine).unfinished("skypilot") == []
    assert "hg-ct-e" not in clusters(fake)


async def test_the_sdk_stays_out_of_the_gateway_environment() -> None:
    """The point of the subprocess: importing hybridgate's provider never needs `sky`."""
    code = "import hybridgate.cloud.skypilot, sys; print('sky' in sys.modules)"
    assert run_python(code) == "False"


async def test_a_pool_routes_through_its_cluster_rearms_the_deadman_and_downs_it_on_shutdown(
    fake: Proc,
) -> None:
    """The router in process: a pod backend on the skypilot provider starts a cluster for a call, serves it
    there, re-arms the dead-man while it uses the cluster, and tears the (spot) cluster down on close."""
    from hybridgate.backends.pod import PodBackend
    from hybridgate.config import BackendConfig
    from hybridgate.protocol import Operation
    from hybridgate.router import BackendManager, Call

    options = {
        "provider": "skypilot",
        "gpu_types": ["L4"],
        "poll_s": 0.2,
        "retry_s": 0,
        "skypilot": {"python": str(SKY_PYTHON), "api_server": fake.url, "deadman_minutes": 30},
    }
    pool = PodBackend(BackendConfig(name="ctpool", kind="pod", models={"m": "m"}, options=options))
    pool.provider.heartbeat_s = 0.5  # instead of deadman_minutes / 3
    mgr = BackendManager([pool], warming_wait_s=60)
    await mgr.start()
    try:
        chat = Call(Operation.CHAT, {"model": "m", "messages": [{"role": "user", "content": "hi"}]}, "m")
        res = await mgr.complete(chat)
        assert res.backend == "ctpool"
        (r,) = pool.replicas
        name = r.pod_id or ""
        assert name.startswith("hg-ctpool-") and r.gpu == "L4:1 spot"
        deadline = time.monotonic() + 30
        while [b["idle_minutes"] for b in sent(fake, "/autostop", name)][:2] != [-1, 30]:
            assert time.monotonic() < deadline, sent(fake, "/autostop", name)
            await asyncio.sleep(0.1)
    finally:
        await mgr.close()
    assert name in gone(fake) and name not in clusters(fake)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"provider": "skypilot", "data_centers": ["US-TX-3"]}, "skypilot.infra"),
        ({"provider": "skypilot", "provider_url": "http://x"}, "skypilot.api_server"),
        ({"provider": "skypilot", "spot": True}, "use skypilot.spot"),
        ({"provider": "skypilot", "bid_per_gpu": 0.2}, "use skypilot.spot"),
        ({"gpu_types": ["L4"], "image": "img", "skypilot": {}}, "only with provider skypilot"),
        ({"provider": "skypilot", "skypilot": {"deadman_minutes": 0}}, "options.skypilot.deadman_minutes"),
        ({"provider": "skypilot", "skypilot": {"spot": "sometimes"}}, "options.skypilot.spot"),
        ({"provider": "skypilot", "skypilot": {"run": ""}}, "options.skypilot.run"),
    ],
)
async def test_a_bad_skypilot_pod_backend_is_refused_naming_the_field(
    options: dict[str, Any], message: str
) -> None:
    from hybridgate.backends import build_backend
    from hybridgate.config import BackendConfig

    with pytest.raises(ValueError, match=re.escape(message)):
        build_backend(BackendConfig(name="gpu", kind="pod", models={"m": "m"}, options=options))
