"""`hybridgate mock-skypilot`: a SkyPilot API server on loopback, as the real `skypilot` 0.14.1 SDK speaks it.

Checked by running the pinned SDK (in `.venv-sky`) against it through hybridgate's SkyPilot provider
(tests/test_cloud_skypilot.py). It does not import `sky`: it lives in the gateway's environment and
produces exactly what the SDK decodes:

- `GET /api/health` -> `{"status": "healthy", "api_version": "62", "version": "0.14.1", "commit": ...}`;
  every answer carries the `X-SkyPilot-API-Version` and `X-SkyPilot-Version` headers (the SDK refuses a
  server without them).
- `POST /validate` (synchronous, 200), then `POST /launch`, `/status`, `/endpoints`, `/autostop`, `/stop`,
  `/start`, `/down`, `/api/cancel` -> 200 with the request's id in `X-Skypilot-Request-ID`; the work runs in
  the background, as on the real server.
- `GET /api/get?request_id=` blocks until the request is done and answers a `RequestPayload`:
  `entrypoint` and `request_body` are base64 pickles (of None: the SDK never calls them), `return_value`
  is JSON (decoded per request name: `sky.launch` -> `{"job_id", "handle": null}`, `sky.status` -> the
  `StatusResponse` fields, `sky.endpoints` -> `{port: "host:port"}`), `error` is JSON whose `object` is a
  base64 pickle of `{"type", "message", "args", "attributes", "stacktrace"}` (builtins only), which the
  SDK turns back into `sky.exceptions.<type>`; a failed request answers HTTP 500 `{"detail": payload}`.
- `GET /api/status?request_ids=...` lists requests (the SDK's `api_status`).

Clusters: a launch picks the first candidate of the task's resources (`ordered` in order, else
`any_of`, else the one set) that has capacity (`--no-capacity spot|on-demand|all|<accelerator>`), stays
INIT for `--launch-s`, then is UP; each UP cluster is backed by a real `hybridgate mock-server` (the
task's env `MODEL`, its secret `HYBRIDGATE_REPLICA_API_KEY` as the server's `--api-key`), whose port is
the cluster's endpoint for the task's first port. Stopping a spot cluster fails as on AWS
(`NotSupportedError`); a missing cluster is `ClusterDoesNotExist`; no capacity is
`ResourcesUnavailableError`. Autostop runs for real with `wait_for: none` (a minute lasts `--minute-s`
seconds), so a dead-man timer that is not re-armed does tear the cluster down; with `jobs`/`jobs_and_ssh`
it never fires (the model server's job never ends), as SkyPilot documents.

`GET /_mock/clusters` and `GET /_mock/requests` show state and every request body the SDK sent (the task
YAML included); `POST /_mock/config` changes faults while it runs.
"""

from __future__ import annotations

import asyncio
import base64
import pickle
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import orjson
import yaml

from hybridgate._asgi import Receive, Scope, Send, send_bytes
from hybridgate.testing.mocks._base import lifespan, start_model_server, stop_model_server, whole_body

API_VERSION = 62  # sky.server.constants.API_VERSION of skypilot 0.14.1
VERSION = "0.14.1"
COMMIT = "7e595970fake0000000000000000000000000000"
_HEADERS = [
    (b"x-skypilot-api-version", str(API_VERSION).encode()),
    (b"x-skypilot-version", VERSION.encode()),
]
_VERBS = ("launch", "status", "endpoints", "autostop", "stop", "start", "down")
# USD per hour of the mock's instances: (accelerator or "cpu", spot) -> price
PRICES: dict[tuple[str, bool], float] = {
    ("cpu", True): 0.012,
    ("cpu", False): 0.0416,
    ("T4", True): 0.158,
    ("T4", False): 0.526,
    ("L4", True): 0.29,
    ("L4", False): 0.805,
}
USER_HASH = "abcd1234"


def pickled(obj: Any) -> str:
    return base64.b64encode(pickle.dumps(obj)).decode()


class SkyError(Exception):
    """A `sky.exceptions.<type>` the SDK raises on the client."""

    def __init__(self, type_: str, message: str) -> None:
        super().__init__(message)
        self.type, self.message = type_, message

    def encoded(self) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "type": self.type,
            "message": self.message,
            "args": (self.message,),
            "attributes": {},
            "stacktrace": None,
        }
        return {"object": pickled(obj), "type": self.type, "message": self.message}


@dataclass
class Cluster:
    name: str
    task: dict[str, Any]
    resources: dict[str, Any]  # the candidate that was chosen
    status: str = "INIT"
    autostop: int = -1
    to_down: bool = False
    wait_for: str = "jobs_and_ssh"
    armed_at: float = field(default_factory=time.monotonic)
    launched_at: int = field(default_factory=lambda: int(time.time()))
    up_since: float | None = None
    billed_s: float = 0.0
    server: asyncio.subprocess.Process | None = None
    server_port: int | None = None
    events: list[str] = field(default_factory=list)
    ever_up: bool = False

    @property
    def spot(self) -> bool:
        return bool(self.resources.get("use_spot"))

    @property
    def accelerator(self) -> str:
        acc = self.resources.get("accelerators")
        if isinstance(acc, dict) and acc:
            return str(next(iter(acc)))
        if isinstance(acc, str) and acc:
            return acc.split(":")[0]
        return "cpu"

    @property
    def price(self) -> float:
        return PRICES.get((self.accelerator, self.spot), 0.1 if self.spot else 0.3)

    @property
    def cloud(self) -> str:
        infra = str(self.resources.get("infra") or self.resources.get("cloud") or "aws")
        return infra.split("/")[0].lower()

    @property
    def ports(self) -> list[int]:
        raw = self.resources.get("ports")
        items = raw if isinstance(raw, list) else [raw] if raw is not None else []
        return [int(str(p).split("-")[0]) for p in items]

    def billed(self) -> float:
        return self.billed_s + (time.monotonic() - self.up_since if self.up_since is not None else 0.0)

    def resources_str(self) -> str:
        spot = "[spot]" if self.spot else ""
        gpu = "" if self.accelerator == "cpu" else f"gpus={self.accelerator}:1, "
        return f"1x{spot}({gpu}cpus=4, mem=16, fake.{self.accelerator.lower()}, disk=256)"

    def record(self) -> dict[str, Any]:
        """One `StatusResponse` as the server's encoder writes it (the handle left out: None)."""
        return {
            "name": self.name,
            "launched_at": self.launched_at,
            "handle": None,
            "last_use": "sky launch",
            "status": self.status,
            "autostop": self.autostop,
            "to_down": self.to_down,
            "owner": None,
            "metadata": {},
            "cluster_hash": f"hash-{self.name}",
            "cluster_ever_up": self.ever_up,
            "status_updated_at": int(time.time()),
            "user_hash": USER_HASH,
            "user_name": "hybridgate",
            "config_hash": None,
            "workspace": "default",
            "last_creation_yaml": None,
            "last_creation_command": None,
            "is_managed": False,
            "resources_str": self.resources_str(),
            "resources_str_full": self.resources_str(),
            "nodes": 1,
            "cloud": self.cloud.upper() if self.cloud == "aws" else self.cloud.capitalize(),
            "region": "fake-region-1",
            "cpus": "4",
            "memory": "16",
            "accelerators": None if self.accelerator == "cpu" else f"{self.accelerator}:1",
        }


@dataclass
class Request:
    id: str
    name: str  # "sky.launch"
    body: dict[str, Any]
    cluster_name: str | None
    status: str = "PENDING"
    created_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    return_value: Any = None
    error: SkyError | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def payload(self) -> dict[str, Any]:
        return {
            "request_id": self.id,
            "name": self.name,
            "entrypoint": pickled(None),
            "request_body": pickled(None),
            "status": self.status,
            "created_at": self.created_at,
            "user_id": USER_HASH,
            "return_value": orjson.dumps(self.return_value).decode(),
            "error": orjson.dumps(self.error.encoded() if self.error else None).decode(),
            "pid": None,
            "schedule_type": "long" if self.name in ("sky.launch", "sky.start") else "short",
            "user_name": "hybridgate",
            "cluster_name": self.cluster_name,
            "status_msg": None,
            "should_retry": False,
            "finished_at": self.finished_at,
            "file_mounts_blob_id": None,
        }


@dataclass
class Faults:
    no_capacity: set[str] = field(default_factory=set)  # "spot", "on-demand", "all", or accelerator names
    launch_s: float = 0.2  # seconds a launch (or start) stays INIT
    minute_s: float = 60.0  # how long an autostop "minute" lasts
    validate_error: str | None = None  # /validate answers 400 with this message (a bad task)
    enabled_clouds: list[str] = field(default_factory=lambda: ["AWS", "GCP", "Azure"])
    server_args: list[str] = field(default_factory=list)  # extra mock-server flags, e.g. --fail-rate 1


def task_from_yaml(text: str) -> dict[str, Any]:
    """The task of a DAG YAML as the SDK dumps it (several documents: the DAG's name, then the task)."""
    docs = [d for d in yaml.safe_load_all(text) if isinstance(d, dict)]
    for d in reversed(docs):
        if any(k in d for k in ("resources", "run", "setup", "envs")):
            return d
    return docs[-1] if docs else {}


def candidates(task: dict[str, Any]) -> list[dict[str, Any]]:
    """The resource candidates in the order they are tried (shared fields copied into each)."""
    res = task.get("resources") or {}
    if not isinstance(res, dict):
        return [{}]
    shared = {k: v for k, v in res.items() if k not in ("ordered", "any_of")}
    listed = res.get("ordered") or res.get("any_of") or [{}]
    return [{**shared, **c} for c in listed]


class SkyPilotMock:
    """The ASGI app of `hybridgate mock-skypilot`."""

    def __init__(self, *, faults: Faults | None = None, backing_servers: bool = True) -> None:
        self.faults = faults or Faults()
        self.backing_servers = backing_servers
        self.clusters: dict[str, Cluster] = {}
        self.requests: dict[str, Request] = {}
        self.log: list[dict[str, Any]] = []  # every POST the SDK sent: path and body
        self.gone: dict[str, float] = {}  # cluster name -> seconds billed, once torn down
        self._ticker: asyncio.Task[None] | None = None

    def _start_ticker(self) -> None:
        self._ticker = asyncio.create_task(self._autostop_loop())

    # --- ASGI ------------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send, startup=self._start_ticker, shutdown=self.shutdown)
            return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        body = await whole_body(receive)
        query = parse_qs(scope.get("query_string", b"").decode())
        if path == "/api/health" and method == "GET":
            await self._json(
                send,
                200,
                {
                    "status": "healthy",
                    "api_version": str(API_VERSION),
                    "version": VERSION,
                    "version_on_disk": VERSION,
                    "commit": COMMIT,
                    "basic_auth_enabled": False,
                    "user": None,
                    "service_account_token_enabled": False,
                },
            )
        elif path == "/health" and method == "GET":  # for hybridgate's own process helpers
            await self._json(send, 200, {"status": "ok", "clusters": len(self.clusters)})
        elif path == "/validate" and method == "POST":
            await self._validate(body, send)
        elif path == "/api/get" and method == "GET":
            await self._get(query.get("request_id", [""])[0], send)
        elif path == "/api/status" and method == "GET":
            ids = query.get("request_ids") or []
            reqs = [r for r in self.requests.values() if not ids or any(r.id.startswith(i) for i in ids)]
            await self._json(send, 200, [r.payload() for r in reqs])
        elif path == "/enabled_clouds" and method == "GET":
            await self._submit("enabled_clouds", b"{}", send)
        elif path == "/api/cancel" and method == "POST":
            await self._submit("api_cancel", body, send)
        elif method == "POST" and path.lstrip("/") in _VERBS:
            await self._submit(path.lstrip("/"), body, send)
        elif path == "/_mock/clusters" and method == "GET":
            await self._json(
                send,
                200,
                {"clusters": [self._state(c) for c in self.clusters.values()], "gone": self.gone},
            )
        elif path == "/_mock/requests" and method == "GET":
            await self._json(send, 200, {"requests": self.log})
        elif path == "/_mock/config" and method == "POST":
            await self._config(body, send)
        else:
            await self._json(send, 404, {"detail": "Not Found"})

    @staticmethod
    async def _json(
        send: Send, status: int, obj: Any, extra: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        headers = [(b"content-type", b"application/json"), *_HEADERS, *(extra or [])]
        await send_bytes(send, status, orjson.dumps(obj), headers)

    def _state(self, c: Cluster) -> dict[str, Any]:
        return {
            "name": c.name,
            "status": c.status,
            "spot": c.spot,
            "accelerator": c.accelerator,
            "price_per_hour": c.price,
            "billed_s": round(c.billed(), 3),
            "autostop": c.autostop,
            "to_down": c.to_down,
            "wait_for": c.wait_for,
            "ports": c.ports,
            "server_port": c.server_port,
            "task": c.task,
            "resources": c.resources,
            "events": c.events,
        }

    async def _config(self, body: bytes, send: Send) -> None:
        try:
            cfg = orjson.loads(body or b"{}")
            if not isinstance(cfg, dict):
                raise ValueError("a JSON object is expected")
            f = self.faults
            if "no_capacity" in cfg:
                f.no_capacity = set(cfg["no_capacity"])
            for key in ("launch_s", "minute_s"):
                if key in cfg:
                    setattr(f, key, float(cfg[key]))
            if "validate_error" in cfg:
                f.validate_error = cfg["validate_error"]
            if "enabled_clouds" in cfg:
                f.enabled_clouds = [str(c) for c in cfg["enabled_clouds"]]
            if "server_args" in cfg:
                f.server_args = [str(a) for a in cfg["server_args"]]
            for name, seconds in (cfg.get("backdate") or {}).items():  # a leftover of an old run
                self._cluster(name).launched_at -= int(seconds)
        except (ValueError, TypeError, SkyError) as e:
            await self._json(send, 400, {"error": str(e)})
            return
        await self._json(send, 200, {"no_capacity": sorted(f.no_capacity), "launch_s": f.launch_s})

    async def _validate(self, body: bytes, send: Send) -> None:
        self.log.append({"path": "/validate", "body": orjson.loads(body or b"{}")})
        if self.faults.validate_error:
            msg = self.faults.validate_error
            # The SDK rebuilds this one from plain JSON (sky.exceptions.deserialize_exception), no pickle.
            obj = {"type": "ValueError", "message": msg, "args": [msg], "attributes": {}}
            await self._json(send, 400, {"detail": obj})
            return
        await self._json(send, 200, {})

    # --- requests --------------------------------------------------------------------------------
    async def _submit(self, verb: str, raw: bytes, send: Send) -> None:
        try:
            body = orjson.loads(raw or b"{}")
        except orjson.JSONDecodeError:
            await self._json(send, 400, {"detail": "the body is not JSON"})
            return
        self.log.append({"path": f"/{verb}", "body": body})
        name = "sky." + verb
        cluster = body.get("cluster_name") or body.get("cluster")
        req = Request(uuid.uuid4().hex, name, body, cluster)
        self.requests[req.id] = req
        req.task = asyncio.create_task(self._execute(req, verb))
        await self._json(send, 200, {"request_id": req.id}, [(b"x-skypilot-request-id", req.id.encode())])

    async def _execute(self, req: Request, verb: str) -> None:
        req.status = "RUNNING"
        try:
            req.return_value = await getattr(self, f"_do_{verb}")(req.body, req)
            if req.status == "RUNNING":
                req.status = "SUCCEEDED"
        except SkyError as e:
            req.error, req.status = e, "FAILED"
        except asyncio.CancelledError:
            req.status = "CANCELLED"
        except Exception as e:  # a bug of the mock: the client sees it as the server's error
            req.error, req.status = SkyError("RuntimeError", f"mock-skypilot: {e!r}"), "FAILED"
        req.finished_at = time.time()
        req.done.set()

    async def _get(self, rid: str, send: Send) -> None:
        req = self.requests.get(rid) or next(
            (r for r in self.requests.values() if rid and r.id.startswith(rid)), None
        )
        if req is None:
            await self._json(send, 404, {"detail": f"Request {rid!r} not found"})
            return
        await req.done.wait()
        if req.error is not None:
            await self._json(send, 500, {"detail": req.payload()})
        else:
            await self._json(send, 200, req.payload())

    # --- verbs -----------------------------------------------------------------------------------
    def _cluster(self, name: str) -> Cluster:
        c = self.clusters.get(name)
        if c is None:
            raise SkyError("ClusterDoesNotExist", f"Cluster {name!r} does not exist.")
        return c

    def _has_capacity(self, cand: dict[str, Any]) -> bool:
        nc = self.faults.no_capacity
        spot = bool(cand.get("use_spot"))
        acc = cand.get("accelerators")
        names = set(acc) if isinstance(acc, dict) else {str(acc).split(":")[0]} if acc else {"cpu"}
        return not ("all" in nc or (spot and "spot" in nc) or (not spot and "on-demand" in nc) or names & nc)

    async def _do_launch(self, body: dict[str, Any], req: Request) -> Any:
        task = task_from_yaml(body.get("task") or "")
        name = body["cluster_name"]
        existing = self.clusters.get(name)
        if existing is not None:
            if existing.status == "STOPPED":
                await self._bring_up(existing, "restarted by launch")
            return {"job_id": 1, "handle": None}
        tried: list[str] = []
        for cand in candidates(task):
            if self._has_capacity(cand):
                c = Cluster(name, task, cand)
                auto = cand.get("autostop")
                if isinstance(auto, dict):
                    c.autostop = int(auto.get("idle_minutes", -1))
                    c.to_down = bool(auto.get("down", False))
                    c.wait_for = str(auto.get("wait_for") or "jobs_and_ssh")
                c.events += [f"no capacity for {t}" for t in tried]
                self.clusters[name] = c
                await self._bring_up(c, "launched")
                return {"job_id": 1, "handle": None}
            kind = "spot" if cand.get("use_spot") else "on-demand"
            acc = cand.get("accelerators")
            what = ", ".join(f"{k}:{v}" for k, v in acc.items()) if isinstance(acc, dict) else acc
            tried.append(f"{what or 'cpu'} ({kind})")
        raise SkyError(
            "ResourcesUnavailableError",
            "Failed to provision all possible launchable resources. Relax the task's resource "
            f"requirements: {len(tried)} candidate(s) tried: {', '.join(tried)}",
        )

    async def _bring_up(self, c: Cluster, why: str) -> None:
        c.status = "INIT"
        c.events.append(why)
        await asyncio.sleep(self.faults.launch_s)
        if c.name not in self.clusters:  # torn down meanwhile
            raise SkyError("ClusterDoesNotExist", f"Cluster {c.name!r} does not exist.")
        if self.backing_servers and c.server is None:
            await self._start_server(c)
        c.status, c.ever_up = "UP", True
        c.up_since = time.monotonic()
        c.armed_at = time.monotonic()  # a (re)start resets the idle timer

    async def _start_server(self, c: Cluster) -> None:
        envs = c.task.get("envs") or {}
        secrets_ = c.task.get("secrets") or {}
        model = str(envs.get("MODEL") or "mock")
        key = secrets_.get("HYBRIDGATE_REPLICA_API_KEY")
        args = [*(["--api-key", str(key)] if key else []), *self.faults.server_args]
        c.server, port = await start_model_server(model, args)
        c.server_port = port
        c.events.append(f"model server on 127.0.0.1:{port} (model {model})")

    async def _stop_server(self, c: Cluster) -> None:
        proc, c.server, c.server_port = c.server, None, None
        if c.up_since is not None:
            c.billed_s += time.monotonic() - c.up_since
            c.up_since = None
        await stop_model_server(proc)

    async def _do_enabled_clouds(self, body: dict[str, Any], req: Request) -> Any:
        return list(self.faults.enabled_clouds)

    async def _do_status(self, body: dict[str, Any], req: Request) -> Any:
        names = body.get("cluster_names")
        return [c.record() for c in self.clusters.values() if not names or c.name in names]

    async def _do_endpoints(self, body: dict[str, Any], req: Request) -> Any:
        c = self._cluster(body.get("cluster") or "")
        if c.status != "UP":
            raise SkyError("ClusterNotUpError", f"Cluster {c.name!r} is not up (status {c.status}).")
        port = body.get("port")
        ports = c.ports
        if port is not None and int(port) not in ports:
            raise SkyError("ValueError", f"Port {port} is not exposed on cluster {c.name!r}.")
        host_port = c.server_port
        return {str(p): f"127.0.0.1:{host_port or p}" for p in ([int(port)] if port is not None else ports)}

    async def _do_autostop(self, body: dict[str, Any], req: Request) -> Any:
        c = self._cluster(body.get("cluster_name") or "")
        if c.status != "UP":
            raise SkyError("ClusterNotUpError", f"Cluster {c.name!r} is not up (status {c.status}).")
        minutes = int(body.get("idle_minutes", -1))
        if minutes < 0:
            c.autostop = -1
            c.events.append("autostop cancelled")
            return None
        if c.autostop < 0:  # SkyPilot: the idle time resets when autostop is set with no active setting
            c.armed_at = time.monotonic()
        c.autostop, c.to_down = minutes, bool(body.get("down"))
        c.wait_for = str(body.get("wait_for") or "jobs_and_ssh")
        c.events.append(f"autostop {minutes} min ({'down' if c.to_down else 'stop'}, wait_for {c.wait_for})")
        return None

    async def _do_stop(self, body: dict[str, Any], req: Request) -> Any:
        c = self._cluster(body.get("cluster_name") or "")
        if c.spot:
            raise SkyError(
                "NotSupportedError",
                f"Stopping cluster {c.name!r}: stopping spot instances is currently not supported on "
                f"{c.cloud.upper()}.",
            )
        await self._stop_server(c)
        c.status, c.autostop = "STOPPED", -1
        c.events.append("stopped")
        return None

    async def _do_start(self, body: dict[str, Any], req: Request) -> Any:
        c = self._cluster(body.get("cluster_name") or "")
        if c.status != "UP":
            if not self._has_capacity(c.resources):
                raise SkyError(
                    "ResourcesUnavailableError", f"Failed to acquire resources to restart {c.name!r}."
                )
            await self._bring_up(c, "started")
        minutes = body.get("idle_minutes_to_autostop")
        if minutes is not None:
            c.autostop, c.to_down = int(minutes), bool(body.get("down"))
            c.wait_for = str(body.get("wait_for") or "jobs_and_ssh")
            c.armed_at = time.monotonic()
        return None

    async def _do_down(self, body: dict[str, Any], req: Request) -> Any:
        c = self._cluster(body.get("cluster_name") or "")
        await self._teardown(c, "down")
        return None

    async def _teardown(self, c: Cluster, why: str) -> None:
        self.clusters.pop(c.name, None)
        await self._stop_server(c)
        c.status = "TERMINATED"
        c.events.append(why)
        self.gone[c.name] = round(c.billed_s, 3)

    async def _do_api_cancel(self, body: dict[str, Any], req: Request) -> Any:
        cancelled = []
        for rid in body.get("request_ids") or []:
            r = self.requests.get(rid)
            if r is not None and not r.done.is_set() and r.task is not None:
                r.task.cancel()
                cancelled.append(rid)
        return cancelled

    # --- autostop --------------------------------------------------------------------------------
    async def _autostop_loop(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            now = time.monotonic()
            for c in list(self.clusters.values()):
                if c.status != "UP" or c.autostop < 0 or c.wait_for != "none":
                    continue  # jobs / jobs_and_ssh: the model server's job never ends, never idle
                if now - c.armed_at >= c.autostop * self.faults.minute_s:
                    if c.to_down:
                        await self._teardown(c, "autodown (idle timer, wait_for none)")
                    else:
                        await self._stop_server(c)
                        c.status, c.autostop = "STOPPED", -1
                        c.events.append("autostopped (idle timer, wait_for none)")

    async def shutdown(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        await asyncio.gather(*(self._stop_server(c) for c in self.clusters.values()), return_exceptions=True)


def start_mock_skypilot(*, port: int | None = None, timeout: float = 30.0, **options: Any) -> Any:
    """`hybridgate mock-skypilot` as a child process (options as keyword arguments: launch_s=0.5,
    no_capacity=["spot"], no_servers=True, ...); its `url` is what SKYPILOT_API_SERVER_ENDPOINT takes."""
    from hybridgate.testing import procs

    port = port or procs.free_port()
    return procs._spawn(
        ["mock-skypilot", "--port", str(port), *procs._flags(options)], port, None, "/api/health", timeout
    )


__all__ = [
    "API_VERSION",
    "COMMIT",
    "PRICES",
    "VERSION",
    "Faults",
    "SkyPilotMock",
    "candidates",
    "start_mock_skypilot",
    "task_from_yaml",
]
