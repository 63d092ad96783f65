"""`hybridgate mock-runpod`: RunPod's pod API (GraphQL) on loopback, as the official `runpod` SDK speaks it.

What it serves (checked by running the official `runpod` SDK 1.12.0 against it; tests/test_runpod_mock.py):

- `POST /graphql` with `{"query": "<text>"}`, arguments written inline in the query text as the SDK
  writes them (no variables): `gpuTypes`, `podFindAndDeployOnDemand`, `pod`, `myself { pods }`,
  `myself` (the user), `podStop`, `podResume`, `podTerminate`. The arguments are parsed as GraphQL
  (strings with their escapes, numbers, enums, lists, objects); a query that is not valid GraphQL (an
  unescaped quote in a value, as the SDK sends it) gets a `Syntax Error` as a GraphQL server answers.
- `Authorization: Bearer <key>`: 401 without one, or with another one than `--api-key` when set.
- Errors as RunPod sends them: HTTP 200 with `{"errors": [{"message": ...}], "data": {op: null}}`. The
  texts are RunPod's: "There are no longer any instances available with the requested specifications.
  Please refresh and try again." (no capacity for a GPU type or data centre, `--no-capacity`) and "There
  are not enough free GPUs on the host machine to start this pod." (`--resume-fails`).
- A pod's `runtime` is null until it has been polled `--provision-polls` times and `--provision-s` have
  passed since it was created or resumed (the image pull); `desiredStatus` RUNNING / EXITED (stopped);
  `costPerHr` is its GPU type's price while running, 0 when stopped; a terminated pod reads as null.
- Each running pod is backed by a real OpenAI-compatible server on loopback (`hybridgate mock-server`,
  serving the pod's `MODEL` env value, else `--serve-model`), started when its runtime appears and
  stopped when the pod stops; its runtime shows that server's port as the public port of the pod's
  http port, on 127.0.0.1 (there is no RunPod proxy on loopback).
- Spot pods: `podRentInterruptable` (the same input plus `bidPerGpu`; a bid under the GPU type's
  `minimumBidPrice` gets the no-capacity error), billed at the bid, `podType` INTERRUPTABLE; `POST
  /_mock/interrupt {"pod_id": ID}` takes one back as RunPod does when outbid (it stops: EXITED).
- Faults, settable while running through `POST /_mock/config`: `html_502` (the next N answers are
  Cloudflare-style HTML 502 pages), `null_data` (the next N answers are `{"data": null}` with HTTP 500),
  `no_capacity`, `resume_fails`. `GET /_mock/pods` lists every pod with the seconds it was billed.

Choices of this mock where RunPod's behaviour is not documented: an unknown GPU type in a create
mutation is answered with the no-capacity error; stopping or terminating an unknown pod answers
"Pod not found."; a terminated pod is forgotten by `myself { pods }`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from hybridgate._asgi import Receive, Scope, Send, header, send_bytes, send_json
from hybridgate.testing.mocks._base import lifespan, start_model_server, stop_model_server, whole_body

log = logging.getLogger("hybridgate.mock_runpod")

NO_CAPACITY = "There are no longer any instances available with the requested specifications. Please refresh and try again."
RESUME_NO_GPU = "There are not enough free GPUs on the host machine to start this pod."
NOT_FOUND = "Pod not found."
# GPU type id -> (display name, memory GB, USD per hour on secure cloud)
DEFAULT_GPUS: dict[str, tuple[str, int, float]] = {
    "NVIDIA GeForce RTX 4090": ("RTX 4090", 24, 0.69),
    "NVIDIA RTX A5000": ("RTX A5000", 24, 0.36),
    "NVIDIA A40": ("A40", 48, 0.44),
    "NVIDIA L4": ("L4", 24, 0.43),
}
DATA_CENTERS = ("US-TX-3", "EU-RO-1", "CA-MTL-1")
_HTML_502 = (
    b"<!DOCTYPE html><html><head><title>api.runpod.io | 502: Bad gateway</title></head>"
    b"<body><h1>Bad gateway</h1><p>Cloudflare Ray ID: 0000000000000000</p></body></html>"
)


class GraphQLSyntaxError(Exception):
    pass


# --- a small GraphQL lexer and value parser (enough for inline arguments) ---------------------------
_TOKEN = re.compile(
    r"""
    (?P<ws>[\s,\ufeff]+|\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\["\\/bfnrt]|\\u[0-9A-Fa-f]{4})*")
  | (?P<badstring>")
  | (?P<number>-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)
  | (?P<name>[_A-Za-z][_0-9A-Za-z]*)
  | (?P<punct>\.\.\.|[!$&()\[\]{}:=@|])
    """,
    re.X,
)


def lex(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise GraphQLSyntaxError(f"Syntax Error: Unexpected character: {text[pos]!r}.")
        kind = m.lastgroup or ""
        if kind == "badstring":
            raise GraphQLSyntaxError("Syntax Error: Unterminated string.")
        if kind != "ws":
            out.append((kind, m.group()))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]], pos: int) -> None:
        self.t, self.i = tokens, pos

    def peek(self) -> tuple[str, str]:
        return self.t[self.i] if self.i < len(self.t) else ("eof", "<EOF>")

    def take(self, value: str | None = None, kind: str | None = None) -> str:
        k, v = self.peek()
        if (value is not None and v != value) or (kind is not None and k != kind):
            want = value or kind
            raise GraphQLSyntaxError(f"Syntax Error: Expected {want!r}, found {v!r}.")
        self.i += 1
        return v

    def value(self) -> Any:
        k, v = self.peek()
        if k == "string":
            self.i += 1
            return json.loads(v)  # GraphQL's string escapes are JSON's
        if k == "number":
            self.i += 1
            return float(v) if any(c in v for c in ".eE") else int(v)
        if k == "name":
            self.i += 1
            return {"true": True, "false": False, "null": None}.get(v, _Enum(v))
        if v == "[":
            self.i += 1
            items = []
            while self.peek()[1] != "]":
                items.append(self.value())
            self.i += 1
            return items
        if v == "{":
            self.i += 1
            obj: dict[str, Any] = {}
            while self.peek()[1] != "}":
                key = self.take(kind="name")
                self.take(":")
                obj[key] = self.value()
            self.i += 1
            return obj
        raise GraphQLSyntaxError(f"Syntax Error: Unexpected {v!r}.")

    def arguments(self) -> dict[str, Any]:
        args: dict[str, Any] = {}
        if self.peek()[1] != "(":
            return args
        self.i += 1
        while self.peek()[1] != ")":
            key = self.take(kind="name")
            self.take(":")
            args[key] = self.value()
        self.i += 1
        return args


class _Enum(str):
    """An enum value (unquoted name) as distinct from a string."""


_OPS = (
    "podFindAndDeployOnDemand",
    "podRentInterruptable",
    "deployCpuPod",
    "podStop",
    "podResume",
    "podTerminate",
    "gpuTypes",
    "pod",
    "myself",
)


def parse_operation(query: str) -> tuple[str, dict[str, Any], str]:
    """(field, its arguments, the selection text after it) of the query's first top-level field."""
    tokens = lex(query)
    depth = 0
    for v in (v for k, v in tokens if k == "punct"):
        depth += {"{": 1, "}": -1, "(": 1, ")": -1, "[": 1, "]": -1}.get(v, 0)
        if depth < 0:
            raise GraphQLSyntaxError("Syntax Error: Unexpected '}'.")
    if depth:
        raise GraphQLSyntaxError("Syntax Error: Expected '}', found <EOF>.")
    i = 0
    # skip the operation header: [query|mutation [Name]] {
    while i < len(tokens) and tokens[i][1] != "{":
        i += 1
    i += 1
    if i >= len(tokens) or tokens[i][0] != "name":
        raise GraphQLSyntaxError("Syntax Error: Expected Name.")
    op = tokens[i][1]
    p = _Parser(tokens, i + 1)
    args = p.arguments()
    rest = " ".join(v for _, v in tokens[p.i :])
    # the parsed arguments must be followed by a selection, the end of the operation, or another field
    nxt = p.peek()
    if nxt[0] not in ("punct", "name", "eof") or (nxt[0] == "punct" and nxt[1] not in ("{", "}")):
        raise GraphQLSyntaxError(f"Syntax Error: Unexpected {nxt[1]!r}.")
    return op, args, rest


# --- the pods ------------------------------------------------------------------------------------
@dataclass
class MockPod:
    id: str
    name: str
    image: str
    gpu_type: str
    gpu_count: int
    data_center: str
    env: dict[str, str]
    ports: str
    docker_args: str
    price: float
    interruptible: bool = False  # a spot pod (podRentInterruptable), billed at its bid
    desired: str = "RUNNING"
    polls: int = 0
    since: float = field(default_factory=time.monotonic)  # when it last started billing
    billed_s: float = 0.0  # seconds billed before the current run
    server: asyncio.subprocess.Process | None = None
    server_port: int | None = None
    events: list[tuple[float, str]] = field(default_factory=list)

    def billed(self) -> float:
        return self.billed_s + (time.monotonic() - self.since if self.desired == "RUNNING" else 0.0)

    @property
    def http_port(self) -> int:
        for spec in self.ports.split(","):
            num, _, proto = spec.strip().partition("/")
            if proto == "http" and num.isdigit():
                return int(num)
        return 8000


@dataclass
class Faults:
    no_capacity: set[str] = field(default_factory=set)  # GPU type ids / data centres, or "all"
    resume_fails: bool = False
    html_502: int = 0
    null_data: int = 0


class RunPodMock:
    """The ASGI app of `hybridgate mock-runpod`."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        provision_polls: int = 2,
        provision_s: float = 0.0,
        serve_model: str = "mock",
        backing_servers: bool = True,
        gpus: dict[str, tuple[str, int, float]] | None = None,
        faults: Faults | None = None,
        server_args: list[str] | None = None,
    ) -> None:
        self.api_key = api_key
        self.provision_polls = provision_polls
        self.provision_s = provision_s
        self.serve_model = serve_model
        self.backing_servers = backing_servers
        self.gpus = dict(gpus or DEFAULT_GPUS)
        self.faults = faults or Faults()
        self.server_args = server_args or []
        self.pods: dict[str, MockPod] = {}
        self.requests = 0

    # --- ASGI --------------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send, shutdown=self.shutdown)
            return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        body = await whole_body(receive)
        if path == "/health" and method == "GET":
            await send_json(send, 200, {"status": "ok", "pods": len(self.pods)})
        elif path == "/graphql" and method == "POST":
            await self._graphql(scope, body, send)
        elif path == "/_mock/pods" and method == "GET":
            await send_json(send, 200, {"pods": [self._state(p) for p in self.pods.values()]})
        elif path == "/_mock/config" and method == "POST":
            await self._config(body, send)
        elif path == "/_mock/interrupt" and method == "POST":
            await self._interrupt(body, send)
        else:
            await send_json(send, 404, {"error": f"no route {method} {path}"})

    async def _config(self, body: bytes, send: Send) -> None:
        try:
            cfg = orjson.loads(body or b"{}")
            if not isinstance(cfg, dict):
                raise ValueError("a JSON object is expected")
            f = self.faults
            if "no_capacity" in cfg:
                f.no_capacity = {str(x) for x in cfg["no_capacity"]}
            if "resume_fails" in cfg:
                f.resume_fails = bool(cfg["resume_fails"])
            for k in ("html_502", "null_data"):
                if k in cfg:
                    setattr(f, k, int(cfg[k]))
            if "provision_polls" in cfg:
                self.provision_polls = int(cfg["provision_polls"])
            if "provision_s" in cfg:
                self.provision_s = float(cfg["provision_s"])
        except (ValueError, TypeError) as e:
            await send_json(send, 400, {"error": f"bad config: {e}"})
            return
        await send_json(
            send,
            200,
            {
                "no_capacity": sorted(self.faults.no_capacity),
                "resume_fails": self.faults.resume_fails,
                "html_502": self.faults.html_502,
                "null_data": self.faults.null_data,
                "provision_polls": self.provision_polls,
                "provision_s": self.provision_s,
            },
        )

    async def _interrupt(self, body: bytes, send: Send) -> None:
        """`{"pod_id": ID}`: the provider takes a spot pod's GPU back (outbid): it stops (EXITED), its
        model server goes, billing ends."""
        try:
            pod_id = orjson.loads(body or b"{}").get("pod_id")
        except (orjson.JSONDecodeError, AttributeError):
            pod_id = None
        p = self.pods.get(pod_id) if isinstance(pod_id, str) else None
        if p is None or not p.interruptible or p.desired != "RUNNING":
            await send_json(send, 400, {"error": f"no running spot pod {pod_id!r}"})
            return
        p.billed_s += time.monotonic() - p.since
        p.desired = "EXITED"
        p.events.append((time.time(), "interrupted: the GPU was taken back (outbid)"))
        await self._stop_server(p)
        await send_json(send, 200, self._state(p))

    def _state(self, p: MockPod) -> dict[str, Any]:
        return {
            "id": p.id,
            "name": p.name,
            "desiredStatus": p.desired,
            "gpuTypeId": p.gpu_type,
            "dataCenterId": p.data_center,
            "costPerHr": p.price,
            "interruptible": p.interruptible,
            "billed_s": p.billed(),
            "server_port": p.server_port,
            "env": dict(p.env),
            "events": [[t, e] for t, e in p.events],
        }

    async def _graphql(self, scope: Scope, body: bytes, send: Send) -> None:
        self.requests += 1
        auth = header(scope, b"authorization") or ""
        token = auth[7:] if auth.lower().startswith("bearer ") else ""
        if not token or (self.api_key is not None and not hmac.compare_digest(token, self.api_key)):
            await send_bytes(send, 401, b"Unauthorized", [(b"content-type", b"text/plain")])
            return
        if self.faults.html_502 > 0:
            self.faults.html_502 -= 1
            await send_bytes(send, 502, _HTML_502, [(b"content-type", b"text/html; charset=UTF-8")])
            return
        if self.faults.null_data > 0:
            self.faults.null_data -= 1
            await send_json(send, 500, {"data": None})
            return
        try:
            payload = orjson.loads(body)
            query = payload["query"]
            if not isinstance(query, str):
                raise TypeError
        except (orjson.JSONDecodeError, KeyError, TypeError):
            await send_json(send, 400, {"errors": [{"message": "Must provide query string."}]})
            return
        try:
            op, args, rest = parse_operation(query)
        except GraphQLSyntaxError as e:
            await send_json(
                send, 400, {"errors": [{"message": str(e), "extensions": {"code": "GRAPHQL_PARSE_FAILED"}}]}
            )
            return
        handler = getattr(self, f"_op_{op}", None)
        if handler is None:
            await send_json(
                send,
                400,
                {
                    "errors": [
                        {
                            "message": f'Cannot query field "{op}" on type "Query".',
                            "extensions": {"code": "GRAPHQL_VALIDATION_FAILED"},
                        }
                    ]
                },
            )
            return
        try:
            data = await handler(args.get("input") if isinstance(args.get("input"), dict) else {}, rest)
        except _GqlError as e:
            await send_json(send, 200, {"errors": [{"message": e.message, "path": [op]}], "data": {op: None}})
            return
        await send_json(send, 200, {"data": {op: data}})

    # --- operations ----------------------------------------------------------------------------------
    def _pod_json(self, p: MockPod) -> dict[str, Any] | None:
        if p.desired == "TERMINATED":
            return None
        runtime = None
        if p.desired == "RUNNING" and self._up(p):
            runtime = {
                "uptimeInSeconds": int(time.monotonic() - p.since),
                "ports": [
                    {
                        "ip": "127.0.0.1",
                        "isIpPublic": True,
                        "privatePort": p.http_port,
                        "publicPort": p.server_port or 0,
                        "type": "tcp",
                    }
                ],
                "gpus": [{"id": f"GPU-{p.id}", "gpuUtilPercent": 0, "memoryUtilPercent": 0}],
            }
        display = self.gpus.get(p.gpu_type, (p.gpu_type, 0, 0.0))[0]
        return {
            "id": p.id,
            "name": p.name,
            "imageName": p.image,
            "desiredStatus": p.desired,
            "costPerHr": p.price if p.desired == "RUNNING" else 0.0,
            "gpuCount": p.gpu_count,
            "containerDiskInGb": 20,
            "volumeInGb": 0,
            "volumeMountPath": "/runpod-volume",
            "dockerArgs": p.docker_args,
            "dockerId": None,
            "env": [f"{k}={v}" for k, v in p.env.items()],
            "lastStatusChange": f"{p.desired.title()} by mock",
            "machineId": f"m-{p.id}",
            "memoryInGb": 62,
            "podType": "INTERRUPTABLE" if p.interruptible else "RESERVED",
            "port": p.http_port,
            "ports": p.ports,
            "uptimeSeconds": 0,  # RunPod reports 0 here too (runpodctl#315); runtime.uptimeInSeconds is real
            "vcpuCount": 8,
            "runtime": runtime,
            "machine": {
                "podHostId": f"{p.id}-{p.id[:8]}",
                "gpuDisplayName": display,
                "dataCenterId": p.data_center,
            },
        }

    def _up(self, p: MockPod) -> bool:
        return p.polls > self.provision_polls and time.monotonic() - p.since >= self.provision_s

    async def _poll(self, p: MockPod) -> None:
        """A read of a running pod: count it, and start its model server the moment its runtime appears."""
        if p.desired != "RUNNING":
            return
        p.polls += 1
        if self._up(p) and p.server is None and self.backing_servers:
            await self._start_server(p)

    async def _start_server(self, p: MockPod) -> None:
        model = p.env.get("MODEL") or self.serve_model
        p.server, port = await start_model_server(model, self.server_args)
        p.server_port = port
        p.events.append((time.time(), f"model server starting on 127.0.0.1:{port} (model {model})"))

    async def _stop_server(self, p: MockPod) -> None:
        proc, p.server, p.server_port = p.server, None, None
        await stop_model_server(proc)

    async def shutdown(self) -> None:
        await asyncio.gather(*(self._stop_server(p) for p in self.pods.values()), return_exceptions=True)

    def _capacity(self, gpu: str, dc: str | None) -> bool:
        nc = self.faults.no_capacity
        return not ("all" in nc or gpu in nc or (dc is not None and dc in nc))

    async def _op_gpuTypes(self, inp: dict[str, Any], rest: str) -> list[dict[str, Any]]:
        wanted = inp.get("id")
        out = []
        for gid, (display, mem, price) in self.gpus.items():
            if wanted is not None and gid != wanted:
                continue
            out.append(
                {
                    "id": gid,
                    "displayName": display,
                    "memoryInGb": mem,
                    "maxGpuCount": 8,
                    "secureCloud": True,
                    "communityCloud": True,
                    "securePrice": price,
                    "communityPrice": round(price * 0.8, 2),
                    "oneMonthPrice": None,
                    "threeMonthPrice": None,
                    "oneWeekPrice": None,
                    "communitySpotPrice": round(price * 0.5, 2),
                    "secureSpotPrice": round(price * 0.6, 2),
                    "lowestPrice": {"minimumBidPrice": round(price * 0.5, 2), "uninterruptablePrice": price},
                }
            )
        return out

    async def _op_podRentInterruptable(self, inp: dict[str, Any], rest: str) -> dict[str, Any] | None:
        """A spot pod: as on-demand, plus `bidPerGpu` (required, at least the GPU type's minimum bid,
        else RunPod's no-capacity error), billed at the bid."""
        gpu = inp.get("gpuTypeId")
        bid = inp.get("bidPerGpu")
        if isinstance(bid, bool) or not isinstance(bid, int | float):
            raise _GqlError('Field "bidPerGpu" of required type "Float!" was not provided.')
        minimum = round(self.gpus[gpu][2] * 0.5, 2) if isinstance(gpu, str) and gpu in self.gpus else None
        if minimum is not None and bid < minimum:
            raise _GqlError(NO_CAPACITY)
        out = await self._op_podFindAndDeployOnDemand(inp, rest)
        assert out is not None
        p = self.pods[out["id"]]
        p.interruptible, p.price = True, round(float(bid) * p.gpu_count, 4)
        return self._pod_json(p)

    async def _op_podFindAndDeployOnDemand(self, inp: dict[str, Any], rest: str) -> dict[str, Any] | None:
        gpu = inp.get("gpuTypeId")
        dc = inp.get("dataCenterId")
        if not isinstance(gpu, str) or gpu not in self.gpus or not self._capacity(gpu, dc):
            raise _GqlError(NO_CAPACITY)
        env: dict[str, str] = {}
        for item in inp.get("env") or []:
            if isinstance(item, dict) and isinstance(item.get("key"), str):
                env[item["key"]] = str(item.get("value", ""))
        pid = secrets.token_hex(7)[:14]
        p = MockPod(
            id=pid,
            name=str(inp.get("name") or ""),
            image=str(inp.get("imageName") or ""),
            gpu_type=gpu,
            gpu_count=int(inp.get("gpuCount") or 1),
            data_center=dc or DATA_CENTERS[0],
            env=env,
            ports=str(inp.get("ports") or "8000/http,22/tcp"),
            docker_args=str(inp.get("dockerArgs") or ""),
            price=self.gpus[gpu][2] * int(inp.get("gpuCount") or 1),
        )
        p.events.append((time.time(), "created"))
        self.pods[pid] = p
        return self._pod_json(p)

    async def _op_deployCpuPod(self, inp: dict[str, Any], rest: str) -> dict[str, Any] | None:
        raise _GqlError(NO_CAPACITY)  # this mock rents GPUs only

    def _get(self, inp: dict[str, Any]) -> MockPod:
        p = self.pods.get(str(inp.get("podId")))
        if p is None or p.desired == "TERMINATED":
            raise _GqlError(NOT_FOUND)
        return p

    async def _op_pod(self, inp: dict[str, Any], rest: str) -> dict[str, Any] | None:
        p = self.pods.get(str(inp.get("podId")))
        if p is None:
            return None
        await self._poll(p)
        return self._pod_json(p)

    async def _op_myself(self, inp: dict[str, Any], rest: str) -> dict[str, Any]:
        pods = []
        if rest.lstrip("{ ").startswith("pods"):
            for p in self.pods.values():
                await self._poll(p)
                if (j := self._pod_json(p)) is not None:
                    pods.append(j)
        return {"id": "user_mock", "pubKey": "", "networkVolumes": [], "pods": pods}

    async def _op_podStop(self, inp: dict[str, Any], rest: str) -> dict[str, Any]:
        p = self._get(inp)
        if p.desired == "RUNNING":
            p.billed_s += time.monotonic() - p.since
            p.desired = "EXITED"
            p.events.append((time.time(), "stopped"))
            await self._stop_server(p)
        return {"id": p.id, "desiredStatus": p.desired}

    async def _op_podResume(self, inp: dict[str, Any], rest: str) -> dict[str, Any] | None:
        p = self._get(inp)
        if self.faults.resume_fails:
            raise _GqlError(RESUME_NO_GPU)
        if p.desired != "RUNNING":
            p.desired, p.since, p.polls = "RUNNING", time.monotonic(), 0
            p.events.append((time.time(), "resumed"))
        return self._pod_json(p)

    async def _op_podTerminate(self, inp: dict[str, Any], rest: str) -> None:
        p = self._get(inp)
        if p.desired == "RUNNING":
            p.billed_s += time.monotonic() - p.since
        p.desired = "TERMINATED"
        p.events.append((time.time(), "terminated"))
        await self._stop_server(p)
        return None


class _GqlError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def parse_gpu(spec: str) -> tuple[str, tuple[str, int, float]]:
    """`--gpu "NVIDIA L4=0.43"`: a GPU type id and its price per hour."""
    gid, sep, price = spec.rpartition("=")
    if not sep or not gid.strip():
        raise ValueError(f"{spec!r}: expected GPU_TYPE_ID=PRICE_PER_HOUR")
    value = float(price)
    if not value >= 0:
        raise ValueError(f"{spec!r}: the price must be a number >= 0")
    return gid.strip(), (gid.strip().removeprefix("NVIDIA ").removeprefix("GeForce "), 24, value)


__all__ = [
    "NOT_FOUND",
    "NO_CAPACITY",
    "RESUME_NO_GPU",
    "Faults",
    "RunPodMock",
    "parse_gpu",
    "parse_operation",
    "start_mock_runpod",
]


def start_mock_runpod(*, port: int | None = None, timeout: float = 30.0, **options: Any) -> Any:
    """`hybridgate mock-runpod` as a child process (options as keyword arguments: provision_polls=3,
    no_capacity=["NVIDIA L4"], no_servers=True, ...); its `url` is what RUNPOD_API_BASE_URL takes."""
    from hybridgate.testing import procs

    port = port or procs.free_port()
    return procs._spawn(
        ["mock-runpod", "--port", str(port), *procs._flags(options)], port, None, "/health", timeout
    )
