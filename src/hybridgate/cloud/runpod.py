"""RunPod pods over RunPod's GraphQL API (the API the official `runpod` SDK speaks), with plain httpx.

Why not the SDK: it pastes names, env values and docker args into the GraphQL text unescaped (a quote in
a value breaks or injects into the mutation), lets `requests`' JSONDecodeError escape on an HTML 502 and
a TypeError on `{"data": null}`, and is synchronous. Here every string literal is JSON-escaped (a JSON
string is a valid GraphQL string: same escapes, `\\uXXXX` for the rest), every enum, id and key is
checked against a pattern before anything is sent, and every answer is checked for the shape it should
have; each failure is one of the named `CloudError`s.

`RUNPOD_API_BASE_URL` (as the SDK reads it) points the provider elsewhere, e.g. at `hybridgate
mock-runpod`.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import httpx

from hybridgate.cloud._errors import (
    CloudAuthError,
    CloudCapacityError,
    CloudError,
    CloudInputError,
    CloudMalformedError,
    CloudNotFoundError,
    CloudProviderError,
    CloudResumeError,
    CloudUnavailableError,
)
from hybridgate.cloud._provider import PodInfo, PodSpec, PodStatus, Provider, check_name

DEFAULT_BASE_URL = "https://api.runpod.io"
# RunPod's own words for its two commonest failures (from its API; see docs/architecture.md).
_NO_CAPACITY = re.compile(r"no longer any instances available", re.I)
_RESUME_HOST = re.compile(r"not enough free GPUs on the host", re.I)
_NOT_FOUND = re.compile(r"\bnot found\b|does not exist", re.I)
_POD_ID = re.compile(r"^[A-Za-z0-9]{1,64}$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_DATA_CENTER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9\-]{0,31}$")
_CLOUD_TYPES = ("SECURE", "COMMUNITY", "ALL")
_STATUS = {"RUNNING": PodStatus.RUNNING, "EXITED": PodStatus.STOPPED, "TERMINATED": PodStatus.TERMINATED}
_POD_FIELDS = (
    "id name desiredStatus costPerHr imageName gpuCount "
    "runtime { uptimeInSeconds ports { ip isIpPublic privatePort publicPort type } } "
    "machine { gpuDisplayName dataCenterId }"
)


def gql_string(value: str) -> str:
    """`value` as a GraphQL string literal. JSON's escaping is GraphQL's (quotes, backslashes, control
    characters, and `\\uXXXX` for everything outside ASCII), so nothing in `value` can end the literal."""
    if not isinstance(value, str):
        raise CloudInputError(f"expected a string, got {type(value).__name__}")
    return json.dumps(value, ensure_ascii=True)


def _pod_id(pod_id: str) -> str:
    if not isinstance(pod_id, str) or not _POD_ID.match(pod_id):
        raise CloudInputError(
            f"{pod_id!r} is not a RunPod pod id (letters and digits only)", provider="runpod"
        )
    return pod_id


def _int(value: int, what: str, low: int, high: int) -> str:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise CloudInputError(
            f"{what} must be an integer from {low} to {high}, not {value!r}", provider="runpod"
        )
    return str(value)


def create_mutation(
    spec: PodSpec, gpu_type: str, data_center: str | None, *, bid_per_gpu: float | None = None
) -> str:
    """The podFindAndDeployOnDemand mutation for one (GPU type, data centre) try, or, for a spot pod
    (`bid_per_gpu` given), podRentInterruptable with that bid; every value checked or escaped (this is
    the one place text meets the query)."""
    check_name(spec.name, "pod name")
    if spec.cloud_type not in _CLOUD_TYPES:
        raise CloudInputError(
            f"cloud_type must be one of {', '.join(_CLOUD_TYPES)}, not {spec.cloud_type!r}", provider="runpod"
        )
    if not spec.image.strip():
        raise CloudInputError("the pod image must not be empty", provider="runpod")
    if not gpu_type.strip():
        raise CloudInputError("a GPU type must not be empty", provider="runpod")
    if data_center is not None and not _DATA_CENTER.match(data_center):
        raise CloudInputError(f"{data_center!r} is not a data centre id (e.g. US-TX-3)", provider="runpod")
    env = []
    for k, v in spec.env.items():
        if not _ENV_KEY.match(k):
            raise CloudInputError(f"environment variable name {k!r} is not valid", provider="runpod")
        env.append(f"{{ key: {gql_string(k)}, value: {gql_string(str(v))} }}")
    fields = [
        f"name: {gql_string(spec.name)}",
        f"imageName: {gql_string(spec.image)}",
        f"gpuTypeId: {gql_string(gpu_type)}",
        f"cloudType: {spec.cloud_type}",  # an enum, checked above: no quotes
        f"gpuCount: {_int(spec.gpu_count, 'gpu_count', 1, 16)}",
        f"volumeInGb: {_int(spec.volume_gb, 'volume_gb', 0, 10_000)}",
        f"containerDiskInGb: {_int(spec.container_disk_gb, 'container_disk_gb', 1, 10_000)}",
        "minVcpuCount: 1",
        "minMemoryInGb: 1",
        "supportPublicIp: true",
        "startSsh: false",
        f"ports: {gql_string(_int(spec.port, 'port', 1, 65535) + '/http')}",
        f"dataCenterId: {gql_string(data_center) if data_center else 'null'}",
        f"env: [{', '.join(env)}]",
    ]
    if spec.docker_args:  # an empty dockerArgs is reported to break deploys: leave it out
        fields.append(f"dockerArgs: {gql_string(spec.docker_args)}")
    op = "podFindAndDeployOnDemand"
    if bid_per_gpu is not None:
        fields.append(f"bidPerGpu: {_bid(bid_per_gpu)}")
        op = "podRentInterruptable"
    return f"mutation {{ {op}(input: {{ {', '.join(fields)} }}) {{ {_POD_FIELDS} }} }}"


def _bid(value: float) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1000:
        raise CloudInputError(
            f"bid_per_gpu must be a number of USD per hour above 0, not {value!r}", provider="runpod"
        )
    return repr(float(value))


class RunPodProvider(Provider):
    """RunPod's GPU pods (on-demand or interruptible). Reads are retried once on a transient failure;
    writes never are."""

    name = "runpod"

    def __init__(
        self,
        api_key: str | None,
        *,
        base_url: str | None = None,
        timeout_s: float = 30.0,
        port: int = 8000,
    ) -> None:
        self.api_key = api_key or ""
        self._base_url = base_url
        self.port = port
        self._client = httpx.AsyncClient(timeout=timeout_s)

    @property
    def base_url(self) -> str:
        # Read on every call, as the SDK does, so a test can point it at a mock.
        return (self._base_url or os.environ.get("RUNPOD_API_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")

    async def close(self) -> None:
        await self._client.aclose()

    # --- the wire ---------------------------------------------------------------------------------
    async def _query(self, query: str, op: str, *, read: bool = False) -> Any:
        """POST the query; `data[op]` of the answer, or a named CloudError."""
        if not self.api_key:
            raise CloudAuthError(
                "no RunPod API key configured (set the backend's api_key, e.g. ${RUNPOD_API_KEY})",
                provider=self.name,
            )
        tries = 2 if read else 1
        for attempt in range(tries):
            try:
                return await self._post(query, op)
            except (CloudUnavailableError, CloudMalformedError):
                if attempt + 1 >= tries:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _post(self, query: str, op: str) -> Any:
        url = self.base_url + "/graphql"
        try:
            r = await self._client.post(
                url,
                json={"query": query},
                headers={"Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json"},
            )
        except httpx.TimeoutException:
            raise CloudUnavailableError(
                f"RunPod API at {url} did not answer in time", provider=self.name
            ) from None
        except httpx.HTTPError as e:
            raise CloudUnavailableError(
                f"RunPod API at {url} could not be reached: {type(e).__name__}: {e}", provider=self.name
            ) from None
        if r.status_code in (401, 403):
            raise CloudAuthError(
                f"RunPod refused the API key (HTTP {r.status_code}); check the backend's api_key",
                provider=self.name,
                status=r.status_code,
            )
        try:
            payload = r.json()
        except ValueError:
            kind = (
                "an HTML page" if "html" in r.headers.get("content-type", "").lower() else "a non-JSON body"
            )
            title = re.search(r"<title>(.*?)</title>", r.text, re.I | re.S)
            said = f" ({title.group(1).strip()[:120]})" if title else ""
            cls = (
                CloudUnavailableError if r.status_code >= 500 or r.status_code == 429 else CloudMalformedError
            )
            raise cls(
                f"RunPod API answered HTTP {r.status_code} with {kind}{said}; try again later",
                provider=self.name,
                status=r.status_code,
            ) from None
        if not isinstance(payload, dict):
            raise CloudMalformedError(
                f"RunPod API answered HTTP {r.status_code} with JSON that is not an object",
                provider=self.name,
            )
        errors = payload.get("errors")
        if errors:
            first = errors[0] if isinstance(errors, list) and errors else None
            msg = first.get("message") if isinstance(first, dict) else None
            if not isinstance(msg, str):
                raise CloudMalformedError(
                    f"RunPod API answered HTTP {r.status_code} with an error list of an unknown shape",
                    provider=self.name,
                )
            raise self._classify(msg, r.status_code)
        data = payload.get("data")
        if not isinstance(data, dict) or op not in data:
            if r.status_code >= 500:
                raise CloudUnavailableError(
                    f"RunPod API answered HTTP {r.status_code} without data",
                    provider=self.name,
                    status=r.status_code,
                )
            raise CloudMalformedError(
                f"RunPod API answered HTTP {r.status_code} without data.{op}", provider=self.name
            )
        return data[op]

    def _classify(self, msg: str, status: int) -> CloudError:
        text = msg[:500]
        if _NO_CAPACITY.search(msg):
            return CloudCapacityError(f"RunPod: {text}", provider=self.name, status=status)
        if _RESUME_HOST.search(msg):
            return CloudResumeError(f"RunPod: {text}", provider=self.name, status=status)
        if _NOT_FOUND.search(msg):
            return CloudNotFoundError(f"RunPod: {text}", provider=self.name, status=status)
        return CloudProviderError(f"RunPod: {text}", provider=self.name, status=status)

    # --- answers ----------------------------------------------------------------------------------
    def _info(self, raw: Any) -> PodInfo:
        if not isinstance(raw, dict) or not isinstance(raw.get("id"), str):
            raise CloudMalformedError("RunPod answered with a pod that has no id", provider=self.name)
        status = _STATUS.get(str(raw.get("desiredStatus") or ""), PodStatus.UNKNOWN)
        cost = raw.get("costPerHr")
        if cost is not None and (isinstance(cost, bool) or not isinstance(cost, int | float)):
            raise CloudMalformedError(f"RunPod answered costPerHr={cost!r}, not a number", provider=self.name)
        machine = raw.get("machine")
        if not isinstance(machine, dict):
            machine = {}
        return PodInfo(
            id=raw["id"],
            name=str(raw.get("name") or ""),
            status=status,
            cost_per_hr=float(cost or 0.0),
            endpoint=self._endpoint(raw, status),
            gpu=machine.get("gpuDisplayName"),
            data_center=machine.get("dataCenterId"),
        )

    def _endpoint(self, raw: dict[str, Any], status: PodStatus) -> str | None:
        """The model server's URL once the container runs: a public IP port if RunPod maps one, else the
        pod's proxy URL. An exited pod can still show stale ports: only a running pod has an endpoint."""
        runtime = raw.get("runtime")
        if status is not PodStatus.RUNNING or not isinstance(runtime, dict):
            return None
        ports = runtime.get("ports")
        for p in ports if isinstance(ports, list) else ():
            if not isinstance(p, dict) or p.get("privatePort") != self.port:
                continue
            ip, public = p.get("ip"), p.get("publicPort")
            if p.get("isIpPublic") and isinstance(ip, str) and isinstance(public, int):
                return f"http://{ip}:{public}/v1"
        return f"https://{raw['id']}-{self.port}.proxy.runpod.net/v1"

    # --- the interface ----------------------------------------------------------------------------
    async def launch(self, spec: PodSpec, *, notes: list[str] | None = None) -> PodInfo:
        """On-demand, or with `spec.spot` an interruptible pod (podRentInterruptable) bidding
        `spec.bid_per_gpu`, else the GPU type's current minimum bid (gpuTypes.lowestPrice)."""
        if not spec.gpu_types:
            raise CloudInputError("at least one GPU type is needed", provider="runpod")
        if spec.spot and spec.bid_per_gpu is not None:
            _bid(spec.bid_per_gpu)
        op = "podRentInterruptable" if spec.spot else "podFindAndDeployOnDemand"
        misses: list[str] = []
        for gpu in spec.gpu_types:
            bid = None
            if spec.spot:
                bid = (
                    spec.bid_per_gpu
                    if spec.bid_per_gpu is not None
                    else await self.minimum_bid(gpu, spec.gpu_count)
                )
                if bid is None:
                    misses.append(f"{gpu} (no spot price)")
                    if notes is not None:
                        notes.append(f"no spot price for {gpu}: RunPod lists no minimum bid for it")
                    continue
            for dc in spec.data_centers:
                query = create_mutation(spec, gpu, dc, bid_per_gpu=bid)
                try:
                    raw = await self._query(query, op)
                except CloudCapacityError as e:
                    where = f"{gpu} in {dc or 'any data centre'}"
                    misses.append(where)
                    if notes is not None:
                        notes.append(f"no capacity for {where}: {e.message}")
                    continue
                return self._info(raw)
        raise CloudCapacityError(
            "RunPod has no capacity for any GPU type and data centre tried: " + "; ".join(misses),
            provider=self.name,
        )

    async def minimum_bid(self, gpu_type: str, gpu_count: int = 1) -> float | None:
        """The GPU type's current minimum spot bid per GPU (USD/h); None when RunPod lists none."""
        q = (
            f"query GpuTypes {{ gpuTypes(input: {{ id: {gql_string(gpu_type)} }}) {{ id "
            f"lowestPrice(input: {{ gpuCount: {_int(gpu_count, 'gpu_count', 1, 16)} }}) {{ minimumBidPrice }} }} }}"
        )
        raw = await self._query(q, "gpuTypes", read=True)
        if not isinstance(raw, list):
            raise CloudMalformedError("RunPod answered gpuTypes without a list", provider=self.name)
        for item in raw:
            lowest = item.get("lowestPrice") if isinstance(item, dict) else None
            bid = lowest.get("minimumBidPrice") if isinstance(lowest, dict) else None
            if isinstance(bid, int | float) and not isinstance(bid, bool) and bid > 0:
                return float(bid)
        return None

    async def status(self, pod_id: str) -> PodInfo | None:
        q = f"query pod {{ pod(input: {{ podId: {gql_string(_pod_id(pod_id))} }}) {{ {_POD_FIELDS} }} }}"
        raw = await self._query(q, "pod", read=True)
        if raw is None:
            return None  # RunPod answers null for a pod that is gone
        return self._info(raw)

    async def list(self) -> list[PodInfo]:
        raw = await self._query(
            f"query myPods {{ myself {{ pods {{ {_POD_FIELDS} }} }} }}", "myself", read=True
        )
        pods = raw.get("pods") if isinstance(raw, dict) else None
        if not isinstance(pods, list):
            raise CloudMalformedError("RunPod answered myself without a pod list", provider=self.name)
        return [self._info(p) for p in pods]

    async def stop(self, pod_id: str) -> None:
        q = f"mutation {{ podStop(input: {{ podId: {gql_string(_pod_id(pod_id))} }}) {{ id desiredStatus }} }}"
        await self._query(q, "podStop")

    async def start(self, pod_id: str, gpu_count: int = 1) -> PodInfo:
        q = (
            f"mutation {{ podResume(input: {{ podId: {gql_string(_pod_id(pod_id))}, "
            f"gpuCount: {_int(gpu_count, 'gpu_count', 1, 16)} }}) {{ {_POD_FIELDS} }} }}"
        )
        return self._info(await self._query(q, "podResume"))

    async def terminate(self, pod_id: str) -> None:
        q = f"mutation {{ podTerminate(input: {{ podId: {gql_string(_pod_id(pod_id))} }}) }}"
        try:
            await self._query(q, "podTerminate")
        except CloudNotFoundError:
            return  # already gone: what terminate wanted


__all__ = ["DEFAULT_BASE_URL", "RunPodProvider", "create_mutation", "gql_string"]
