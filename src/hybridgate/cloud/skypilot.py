"""SkyPilot clusters as pods: any cloud SkyPilot's API server can reach (AWS, GCP, Azure, ...).

The SkyPilot SDK does not run in the gateway's environment: `skypilot==0.14.1` pins older `uvicorn` and
`click` than the gateway's hot path uses (and adds about 40 packages). The provider runs
`_sky_driver.py` (stdlib + `sky`) with the Python of a separate environment (`make .venv-sky`), one
process per call, a JSON command in and a JSON result out, never on the event loop. That interpreter is
`options.skypilot.python`, else `HYBRIDGATE_SKYPILOT_PYTHON`, else `.venv-sky/bin/python` in the working
directory or the source checkout.

- **Launch** builds the task in code: the model server as `run`, its port opened, `MODEL`/`PORT` as envs,
  the model server's API key as a task *secret* (never logged by SkyPilot), and resources `ordered` spot
  first then on-demand (`spot: spot_then_on_demand`), each GPU type in order. The launch is a request on
  the API server; its id is kept (and written to the database's `cloud_requests` table when the pool has
  one) so a restarted gateway follows it (a failed launch surfaces as its typed error) or cancels it.
- **Dead-man autostop:** every cluster is launched with `autostop: {idle_minutes: deadman_minutes,
  wait_for: none, down: true}`, an unconditional timer; the gateway re-arms it (`heartbeat`) while it
  uses the cluster, so a crashed gateway leaves nothing billing for longer than `deadman_minutes`.
- **Stop** is a SkyPilot stop for an on-demand cluster and a `down` for a spot one (clouds cannot stop
  spot instances); starting a cluster that was torn down raises CloudResumeError (the pool re-creates).
- It never starts a SkyPilot API server (SKYPILOT_DISABLE_LOCAL_API_SERVER=1); the endpoint is
  `options.skypilot.api_server`, else SKYPILOT_API_SERVER_ENDPOINT, else `~/.sky/config.yaml`. Usage
  collection is off. The backend's `api_key`, when set, is the API server's service-account token.

Trust: the SDK unpickles what the API server sends; point it only at a server you run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Column, Float, MetaData, String, Table

from hybridgate.cloud._errors import (
    CloudAuthError,
    CloudCapacityError,
    CloudError,
    CloudInputError,
    CloudMalformedError,
    CloudNotFoundError,
    CloudProviderError,
    CloudResumeError,
    CloudSetupError,
    CloudUnavailableError,
)
from hybridgate.cloud._provider import PodInfo, PodSpec, PodStatus, Provider, check_name

log = logging.getLogger("hybridgate.pods")

PINNED = "0.14.1"
DRIVER = Path(__file__).with_name("_sky_driver.py")
SETUP_HINT = (
    "create it with `make .venv-sky` in a hybridgate checkout, or `python3 -m venv .venv-sky && "
    f".venv-sky/bin/pip install skypilot=={PINNED}` (add the cloud extras you use, e.g. 'skypilot[aws]=="
    f"{PINNED}', only where the API server runs), and point options.skypilot.python or "
    "HYBRIDGATE_SKYPILOT_PYTHON at its bin/python"
)
DEFAULT_RUN = 'vllm serve "$MODEL" --host 0.0.0.0 --port "$PORT" --api-key "$HYBRIDGATE_REPLICA_API_KEY"'
SpotMode = Literal["spot_then_on_demand", "spot", "on_demand"]

# SkyPilot's exception class names -> ours.
_ERRORS: dict[str, type[CloudError]] = {
    "ResourcesUnavailableError": CloudCapacityError,
    "ClusterDoesNotExist": CloudNotFoundError,
    "ApiServerConnectionError": CloudUnavailableError,
    "ConnectionError": CloudUnavailableError,
    "ReadTimeout": CloudUnavailableError,
    "ConnectTimeout": CloudUnavailableError,
    "Timeout": CloudUnavailableError,
    "ApiServerAuthenticationError": CloudAuthError,
    "PermissionDeniedError": CloudAuthError,
    "NoCloudAccessError": CloudAuthError,
    "CloudUserIdentityError": CloudAuthError,
    "SkyPilotNotInstalled": CloudSetupError,
    "ModuleNotFoundError": CloudSetupError,
    "ValueError": CloudInputError,
    "InvalidSkyPilotConfigError": CloudInputError,
    "ValidationError": CloudInputError,
    "InvalidCloudConfigs": CloudInputError,
}


# The environment the SDK worker gets (plus SKYPILOT_*): locale, paths, proxies and CA bundles.
_ENV_KEEP = frozenset(
    {
        "PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "TZ",
        "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
        "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
        "HYBRIDGATE_SKY_DRIVER_DEBUG",
    }
)  # fmt: skip


def _repo_root_candidates() -> list[Path]:
    here = Path(__file__).resolve()
    return [Path.cwd() / ".venv-sky" / "bin" / "python", here.parents[3] / ".venv-sky" / "bin" / "python"]


def find_python(configured: str | None = None) -> Path:
    """The Python of the SkyPilot environment, or CloudSetupError saying how to create one."""
    wanted = configured or os.environ.get("HYBRIDGATE_SKYPILOT_PYTHON")
    if wanted:
        p = Path(wanted).expanduser()
        if not (p.is_file() and os.access(p, os.X_OK)):
            raise CloudSetupError(
                f"the SkyPilot Python {str(p)!r} does not exist or is not executable; {SETUP_HINT}",
                provider="skypilot",
            )
        return p
    for p in _repo_root_candidates():
        if p.is_file() and os.access(p, os.X_OK):
            return p
    raise CloudSetupError(
        "no SkyPilot environment found (options.skypilot.python, HYBRIDGATE_SKYPILOT_PYTHON, "
        f"./.venv-sky); {SETUP_HINT}",
        provider="skypilot",
    )


@dataclass(frozen=True, slots=True)
class SkyPilotSettings:
    """What a pod backend's `options.skypilot` says (see backends/pod.py SkyPilotOptions)."""

    python: str | None = None
    api_server: str | None = None
    infra: str | None = None
    spot: SpotMode = "spot_then_on_demand"
    cpus: str | None = None
    memory: str | None = None
    disk_size: int | None = None
    run: str = DEFAULT_RUN
    setup: str | None = None
    deadman_minutes: int = 60
    deadman_down: bool = True
    call_timeout_s: float = 300.0
    max_parallel_calls: int = 4
    envs: dict[str, str] = field(default_factory=dict)


def build_task(spec: PodSpec, s: SkyPilotSettings) -> dict[str, Any]:
    """The SkyPilot task (as its YAML dict) for one cluster: the candidates in the order they are tried."""
    check_name(spec.name, "cluster name")
    if not s.run.strip():
        raise CloudInputError("options.skypilot.run (the model server's command) must not be empty")
    base: dict[str, Any] = {"ports": [spec.port]}
    if s.infra:
        base["infra"] = s.infra
    if s.cpus:
        base["cpus"] = s.cpus
    if s.memory:
        base["memory"] = s.memory
    if s.disk_size:
        base["disk_size"] = s.disk_size
    if spec.image.strip():
        base["image_id"] = spec.image if spec.image.startswith("docker:") else f"docker:{spec.image}"
    modes = {"spot_then_on_demand": (True, False), "spot": (True,), "on_demand": (False,)}[s.spot]
    gpus: tuple[str | None, ...] = tuple(spec.gpu_types) or (None,)
    cands = []
    for use_spot in modes:
        for gpu in gpus:
            c: dict[str, Any] = {"use_spot": use_spot}
            if gpu:
                c["accelerators"] = f"{gpu}:{spec.gpu_count}"
            cands.append(c)
    resources = {**base, "ordered": cands} if len(cands) > 1 else {**base, **cands[0]}
    envs = {**s.envs, **{k: str(v) for k, v in spec.env.items()}, "PORT": str(spec.port)}
    task: dict[str, Any] = {
        "name": spec.name,
        "resources": resources,
        "num_nodes": 1,
        "envs": envs,
        "run": s.run,
    }
    if spec.secrets:
        task["secrets"] = dict(spec.secrets)
    if s.setup:
        task["setup"] = s.setup
    return task


class SkyPilotProvider(Provider):
    """Clusters on SkyPilot's API server, through the SDK in its own environment (see the module doc)."""

    name = "skypilot"

    def __init__(
        self,
        settings: SkyPilotSettings | None = None,
        *,
        api_key: str | None = None,
        port: int = 8000,
        journal: Any = None,
    ) -> None:
        self.settings = settings or SkyPilotSettings()
        self.api_key = api_key
        self.port = port
        # Request ids of launches and starts not known to be finished, by cluster.
        self.pending: dict[str, list[str]] = {}
        self.journal = journal  # a RequestJournal (database), set by the pool when it has one
        self._journal_loaded = False
        self._gate = asyncio.Semaphore(max(1, self.settings.max_parallel_calls))
        # A dead-man timer re-armed at a third of its length: two missed beats still leave a margin.
        self.heartbeat_s = max(30.0, self.settings.deadman_minutes * 60.0 / 3)
        self.calls: list[str] = []  # ops run (for the pool's event log and tests)
        self._idle: list[asyncio.subprocess.Process] = []  # driver workers waiting for a command
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    # --- the subprocess ----------------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        """What the SDK needs and nothing else: the gateway's own secrets (master key, provider keys)
        never reach a process that talks to another server."""
        env = {k: v for k, v in os.environ.items() if k in _ENV_KEEP or k.startswith("SKYPILOT_")}
        env["SKYPILOT_DISABLE_LOCAL_API_SERVER"] = "1"
        env["SKYPILOT_DISABLE_USAGE_COLLECTION"] = "1"
        if self.settings.api_server:
            env["SKYPILOT_API_SERVER_ENDPOINT"] = self.settings.api_server
        if self.api_key:
            env["SKYPILOT_SERVICE_ACCOUNT_TOKEN"] = self.api_key
        return env

    async def _spawn(self) -> asyncio.subprocess.Process:
        python = find_python(self.settings.python)
        try:
            return await asyncio.create_subprocess_exec(
                str(python),
                str(DRIVER),
                "--serve",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=None,  # the SDK's messages and the driver's one-line errors: the gateway's log
                env=self._env(),
                limit=16 * 1024 * 1024,
            )
        except OSError as e:
            raise CloudSetupError(
                f"cannot run the SkyPilot Python {python}: {e}; {SETUP_HINT}", provider=self.name
            ) from None

    @staticmethod
    async def _kill(proc: asyncio.subprocess.Process) -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proc.wait(), 5)

    async def call(self, op: str, **args: Any) -> Any:
        """Run one driver command in an idle worker (started on demand, at most max_parallel_calls);
        its result, or the named CloudError its failure maps to."""
        payload = json.dumps({"op": op, **args}).encode() + b"\n"
        self._same_loop()
        async with self._gate:
            proc = self._idle.pop() if self._idle else await self._spawn()
            self.calls.append(op)
            ok = False
            try:
                assert proc.stdin is not None and proc.stdout is not None
                proc.stdin.write(payload)
                await proc.stdin.drain()
                line = await asyncio.wait_for(proc.stdout.readline(), timeout=self.settings.call_timeout_s)
                ok = bool(line)
            except TimeoutError:
                raise CloudUnavailableError(
                    f"SkyPilot {op} did not finish within {self.settings.call_timeout_s:g}s",
                    provider=self.name,
                ) from None
            except (ConnectionError, BrokenPipeError):
                line = b""
            finally:
                if ok and not self._closed:
                    self._idle.append(proc)
                else:  # timed out, cancelled, or dead: the worker goes (a later call starts another)
                    await self._kill(proc)
        try:
            answer = json.loads(line) if line else None
        except ValueError:
            answer = None
        if not isinstance(answer, dict) or "ok" not in answer:
            if line == b"":
                find_python(self.settings.python)  # a vanished interpreter is a setup error
            raise CloudMalformedError(
                f"the SkyPilot driver ({self.settings.python or 'the SkyPilot Python'}) exited "
                f"(code {proc.returncode}) without a result for {op}",
                provider=self.name,
            )
        if answer["ok"]:
            return answer.get("result")
        raise self._error(answer.get("error") or {})

    def _same_loop(self) -> None:
        """Workers and the gate belong to one event loop; used from another one (a CLI that calls
        asyncio.run several times), the old workers are ended and new ones start on demand."""
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return
        for proc in self._idle:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
        self._idle = []
        self._gate = asyncio.Semaphore(max(1, self.settings.max_parallel_calls))
        self._loop = loop

    async def close(self) -> None:
        self._same_loop()
        self._closed = True
        idle, self._idle = self._idle, []
        for proc in idle:  # no command in flight: nothing is lost by ending them now
            await self._kill(proc)

    def _error(self, e: dict[str, Any]) -> CloudError:
        kind, msg = str(e.get("type") or "Error"), str(e.get("message") or "")[:1000]
        if kind == "RuntimeError" and "No SkyPilot API server endpoint is configured" in msg:
            return CloudSetupError(
                "no SkyPilot API server is configured: set options.skypilot.api_server (or "
                "SKYPILOT_API_SERVER_ENDPOINT) to a server started with `sky api start` or deployed "
                "remotely; hybridgate never starts one itself",
                provider=self.name,
            )
        cls = _ERRORS.get(kind, CloudProviderError)
        if cls is CloudSetupError:
            msg = f"{msg}; {SETUP_HINT}"
        return cls(f"SkyPilot {kind}: {msg}", provider=self.name)

    # --- request ids ---------------------------------------------------------------------------------
    async def _remember(self, cluster: str, verb: str, rid: str) -> None:
        self.pending.setdefault(cluster, []).append(rid)
        if self.journal is not None:
            try:
                await self.journal.add(rid, self.name, cluster, verb)
            except Exception as e:  # the database is down: the id stays in memory
                log.warning("skypilot: could not record request %s: %r", rid, e)

    async def _forget(self, cluster: str, rid: str, status: str) -> None:
        ids = self.pending.get(cluster, [])
        if rid in ids:
            ids.remove(rid)
        if not ids:
            self.pending.pop(cluster, None)
        if self.journal is not None:
            with contextlib.suppress(Exception):
                await self.journal.finish(rid, status)

    async def _load_journal(self) -> None:
        """Requests an earlier gateway left unfinished: followed (and cancellable) from here."""
        if self._journal_loaded or self.journal is None:
            return
        try:
            for rid, cluster in await self.journal.unfinished(self.name):
                if rid not in self.pending.get(cluster, []):
                    self.pending.setdefault(cluster, []).append(rid)
            self._journal_loaded = True
        except Exception as e:
            log.warning("skypilot: could not read unfinished requests: %r", e)

    # --- answers ---------------------------------------------------------------------------------
    def _info(self, c: dict[str, Any]) -> PodInfo:
        status = {"UP": PodStatus.RUNNING, "INIT": PodStatus.RUNNING, "STOPPED": PodStatus.STOPPED}.get(
            str(c.get("status")), PodStatus.UNKNOWN
        )
        endpoint = c.get("endpoint")
        url = None
        if status is PodStatus.RUNNING and c.get("status") == "UP" and isinstance(endpoint, str) and endpoint:
            url = (endpoint if endpoint.startswith("http") else f"http://{endpoint}").rstrip("/") + "/v1"
        price = c.get("price_per_hour")
        where = "/".join(str(x) for x in (c.get("cloud"), c.get("region")) if x) or None
        spot = c.get("spot")
        kind = None if spot is None else "spot" if spot else "on-demand"
        return PodInfo(
            id=str(c["name"]),
            name=str(c["name"]),
            status=status,
            cost_per_hr=float(price) if isinstance(price, int | float) else 0.0,
            endpoint=url,
            gpu=" ".join(x for x in (c.get("accelerators") or "cpu", kind) if x),
            data_center=where,
        )

    # --- the interface -------------------------------------------------------------------------------
    async def info(self) -> dict[str, Any]:
        """The API server's and the SDK's versions (`hybridgate check --suite cloud`, startup checks)."""
        return dict(await self.call("info"))

    async def enabled_clouds(self) -> list[str]:
        """The clouds the API server has credentials for (`sky check`), lower case."""
        return [str(c).lower() for c in await self.call("enabled_clouds")]

    async def clusters(self) -> list[dict[str, Any]]:
        """Every cluster as the driver reports it (name, status, launched_at, spot, ...)."""
        return list((await self._status(None)).get("clusters") or [])

    async def launch(self, spec: PodSpec, *, notes: list[str] | None = None) -> PodInfo:
        task = build_task(spec, self.settings)
        s = self.settings
        result = await self.call(
            "launch",
            name=spec.name,
            task=task,
            idle_minutes=s.deadman_minutes,
            wait_for="none",
            down=s.deadman_down,
        )
        rid = str(result["request_id"])
        await self._remember(spec.name, "launch", rid)
        if notes is not None:
            order = [
                f"{c.get('accelerators') or 'cpu'} {'spot' if c['use_spot'] else 'on-demand'}"
                for c in task["resources"].get("ordered", [task["resources"]])
            ]
            notes.append(f"SkyPilot launch request {rid} for {spec.name}: tries {', then '.join(order)}")
        return PodInfo(id=spec.name, name=spec.name, status=PodStatus.RUNNING, cost_per_hr=0.0)

    async def _status(self, names: list[str] | None) -> dict[str, Any]:
        """Clusters (all, or `names`) and the state of their unfinished requests; finished ones are
        forgotten, failed ones kept in `answer["failed"]` by cluster for `status` to raise."""
        await self._load_journal()
        wanted = {n: list(self.pending.get(n, [])) for n in (names or list(self.pending))}
        rids = [r for ids in wanted.values() for r in ids]
        answer = dict(await self.call("status", names=names, request_ids=rids, port=self.port))
        states = answer.get("requests") or {}
        answer["failed"], answer["coming"] = {}, set()
        for cluster, ids in wanted.items():
            for rid in ids:
                st = (states.get(rid) or {}).get("status")
                if st in ("FAILED", "CANCELLED"):
                    await self._forget(cluster, rid, st)
                    answer["failed"][cluster] = (states.get(rid) or {}).get("error") or {
                        "type": "RequestCancelled",
                        "message": f"request {rid} was cancelled",
                    }
                elif st in ("SUCCEEDED", "UNKNOWN"):  # UNKNOWN: the server no longer has it
                    await self._forget(cluster, rid, st)
                elif st is not None:  # PENDING, RUNNING, WAITING
                    answer["coming"].add(cluster)
        return answer

    async def status(self, pod_id: str) -> PodInfo | None:
        check_name(pod_id, "cluster name")
        answer = await self._status([pod_id])
        if pod_id in answer["failed"]:
            raise self._error(answer["failed"][pod_id])
        coming = pod_id in answer["coming"]
        for c in answer.get("clusters") or []:
            if c.get("name") == pod_id:
                return self._info(c)
        if coming:  # launched, not yet recorded by the server
            return PodInfo(id=pod_id, name=pod_id, status=PodStatus.RUNNING, cost_per_hr=0.0)
        return None

    async def list(self) -> list[PodInfo]:
        answer = await self._status(None)
        return [self._info(c) for c in answer.get("clusters") or []]

    async def stop(self, pod_id: str) -> None:
        """Stop an on-demand cluster (resumable); a spot cluster cannot be stopped and is torn down."""
        check_name(pod_id, "cluster name")
        answer = await self._status([pod_id])
        rec = next((c for c in answer.get("clusters") or [] if c.get("name") == pod_id), None)
        if rec is None:
            raise CloudNotFoundError(f"SkyPilot cluster {pod_id!r} does not exist", provider=self.name)
        if rec.get("spot"):
            await self.terminate(pod_id)
            return
        try:
            await self.call("stop", name=pod_id)
        except CloudProviderError as e:
            if "NotSupportedError" not in e.message:
                raise
            log.warning("skypilot: %s cannot be stopped (%s); tearing it down", pod_id, e.message)
            await self.terminate(pod_id)  # a cloud that cannot stop it (spot not recognised, TPU pod...)

    async def start(self, pod_id: str, gpu_count: int = 1) -> PodInfo:
        check_name(pod_id, "cluster name")
        s = self.settings
        try:
            result = await self.call(
                "start",
                name=pod_id,
                idle_minutes=s.deadman_minutes,
                wait_for="none",
                down=s.deadman_down,
            )
        except CloudNotFoundError as e:
            raise CloudResumeError(
                f"SkyPilot cluster {pod_id!r} no longer exists (a spot cluster is torn down, not stopped): "
                f"{e.message}",
                provider=self.name,
            ) from None
        await self._remember(pod_id, "start", str(result["request_id"]))
        return PodInfo(id=pod_id, name=pod_id, status=PodStatus.RUNNING, cost_per_hr=0.0)

    async def terminate(self, pod_id: str) -> None:
        """Cancel the cluster's unfinished requests, then `down` it. A cluster already gone is fine."""
        check_name(pod_id, "cluster name")
        await self._load_journal()
        rids = list(self.pending.get(pod_id, []))
        if rids:
            with contextlib.suppress(CloudError):
                await self.call("cancel", request_ids=rids)
            for rid in rids:
                await self._forget(pod_id, rid, "CANCELLED")
        try:
            await self.call("down", name=pod_id)
        except CloudNotFoundError:
            return

    async def heartbeat(self, pod_id: str) -> None:
        """Re-arm the dead-man autostop: cancelled and set again, so its idle timer restarts now."""
        s = self.settings
        await self.call(
            "autostop",
            name=pod_id,
            idle_minutes=s.deadman_minutes,
            wait_for="none",
            down=s.deadman_down,
            rearm=True,
        )

    async def follow(self, request_id: str) -> Any:
        """Wait for a request to finish (e.g. one an earlier gateway started); its result or its error."""
        return await self.call("get", request_id=request_id)


# Migration 0007. Its own MetaData, like pod_leases: only the provider reads and writes it.
cloud_requests = Table(
    "cloud_requests",
    MetaData(),
    Column("request_id", String(100), primary_key=True),
    Column("provider", String(40), nullable=False),
    Column("cluster", String(200), nullable=False),
    Column("verb", String(40), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("finished_at", Float, nullable=True),
    Column("status", String(20), nullable=True),
)


class RequestJournal:
    """SkyPilot request ids in the database (`cloud_requests`), so a restarted gateway can follow or
    cancel what an earlier one started."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine  # a callable returning the AsyncEngine

    async def add(self, rid: str, provider: str, cluster: str, verb: str) -> None:
        from sqlalchemy import insert

        async with self._engine().begin() as conn:
            await conn.execute(
                insert(cloud_requests).values(
                    request_id=rid, provider=provider, cluster=cluster, verb=verb, created_at=time.time()
                )
            )

    async def finish(self, rid: str, status: str) -> None:
        from sqlalchemy import update

        async with self._engine().begin() as conn:
            await conn.execute(
                update(cloud_requests)
                .where(cloud_requests.c.request_id == rid)
                .values(status=status, finished_at=time.time())
            )

    async def unfinished(self, provider: str) -> list[tuple[str, str]]:
        from sqlalchemy import select

        t = cloud_requests
        async with self._engine().connect() as conn:
            rows = await conn.execute(
                select(t.c.request_id, t.c.cluster).where(t.c.provider == provider, t.c.finished_at.is_(None))
            )
            return [(str(r[0]), str(r[1])) for r in rows]


__all__ = [
    "DEFAULT_RUN",
    "PINNED",
    "RequestJournal",
    "SkyPilotProvider",
    "SkyPilotSettings",
    "build_task",
    "cloud_requests",
    "find_python",
]
