"""/v1/pods: the cloud pods of every `pod` backend, and the operator's start / stop / resume / terminate.

Master key only. Slow steps (a pod takes minutes to start) run in the background: an action answers
202 with the pod as it is now, and its `transitions` show the progress.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from pydantic import BaseModel, ConfigDict, Field

from hybridgate.backends.pod import PodBackend, Replica
from hybridgate.protocol import BadRequestError, GatewayError, NotFoundError
from hybridgate.protocol._control import ErrorResponse
from hybridgate.router import BackendManager

Status = Literal["stopped", "provisioning", "warming", "ready", "draining", "failed"]


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PodTransition(_Out):
    at: float = Field(description="Unix time of the transition")
    state: str
    note: str


class Pod(_Out):
    id: str | None = Field(description="The provider's pod id (null until the provider has made it)")
    name: str
    backend: str
    lifecycle: str
    endpoint: str | None
    gpu: str | None
    in_flight: int
    cost_per_hr: float
    billed_s: float = Field(description="Seconds billed so far, idle included (provisioning to stop)")
    utilisation: float | None = Field(description="Busy time over billed time")
    last_error: str | None
    transitions: list[PodTransition]


class PodPool(_Out):
    backend: str
    lifecycle: str
    provider: str
    min_replicas: int
    max_replicas: int
    idle_stop_s: float
    decides: bool = Field(
        description="This gateway process launches, stops and bills the pool's pods (with several processes "
        "on one database, only the holder of the pool's lease does; the others route to the same pods)"
    )
    last_error: str | None
    events: list[dict[str, Any]]


class PodList(_Out):
    object: Literal["list"] = "list"
    data: list[Pod]
    pools: list[PodPool]


class ConflictError(GatewayError):
    status = 409
    type = "invalid_request_error"
    code = "pod_conflict"


_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "No or a wrong master key"},
    403: {"model": ErrorResponse, "description": "An API key instead of the master key"},
}


def router(manager: BackendManager, master: Callable[..., Awaitable[None]]) -> APIRouter:
    r = APIRouter(prefix="/v1/pods", tags=["pods"], dependencies=[Depends(master)], responses=_ERRORS)

    def pools() -> list[PodBackend]:
        return [b for b in manager.backends if isinstance(b, PodBackend)]

    def find(pod_id: str) -> tuple[PodBackend, Replica]:
        for pool in pools():
            rep = pool.find(pod_id)
            if rep is not None:
                return pool, rep
        raise NotFoundError(f"No pod with id '{pod_id}'; GET /v1/pods lists them.", param="id")

    @r.get("", response_model=PodList, summary="Every pod of every pod backend, with its transitions")
    async def list_pods(
        status: Status | None = Query(None, description="Only pods in this lifecycle state"),
    ) -> dict[str, Any]:
        data = [rep.describe() for pool in pools() for rep in pool.replicas]
        if status is not None:
            data = [d for d in data if d["lifecycle"] == status]
        return {
            "object": "list",
            "data": data,
            "pools": [
                {
                    "backend": p.name,
                    "lifecycle": p.lifecycle.value,
                    **{k: v for k, v in p.describe().items() if k != "replicas"},
                }
                for p in pools()
            ],
        }

    @r.get("/{pod_id}", response_model=Pod, responses={404: {"model": ErrorResponse}}, summary="One pod")
    async def get_pod(pod_id: str) -> dict[str, Any]:
        return find(pod_id)[1].describe()

    @r.post(
        "/start",
        status_code=202,
        response_model=Pod,
        responses={400: {"model": ErrorResponse}, 409: {"model": ErrorResponse}},
        summary="Start (or resume) one more pod of a pod backend; it joins the router once ready",
    )
    async def start_pod(backend: str = Query(description="The pod backend's name")) -> dict[str, Any]:
        pool = next((p for p in pools() if p.name == backend), None)
        if pool is None:
            names = ", ".join(p.name for p in pools()) or "(none configured)"
            raise BadRequestError(
                f"No pod backend named '{backend}'; pod backends: {names}.", param="backend"
            )
        try:
            return pool.start_one().describe()
        except ValueError as e:
            raise ConflictError(str(e)) from None

    def action(verb: str, summary: str) -> None:
        @r.post(
            f"/{{pod_id}}/{verb}",
            status_code=202,
            response_model=Pod,
            responses={404: {"model": ErrorResponse}, 409: {"model": ErrorResponse}},
            summary=summary,
            name=f"{verb}_pod",
        )
        async def act(pod_id: str) -> dict[str, Any]:
            pool, rep = find(pod_id)
            try:
                if verb == "resume":
                    pool.resume_one(rep)
                else:
                    pool.stop_one(rep, terminate=verb == "terminate", reason=f"{verb} by the operator")
            except ValueError as e:
                raise ConflictError(str(e)) from None
            return rep.describe()

    action("stop", "Drain a pod, then stop it (resumable; the GPU is released)")
    action("resume", "Resume a stopped pod (terminated and re-created if its host has no free GPU)")
    action("terminate", "Drain a pod, then delete it for good")
    return r


class PodCollector(Collector):
    """Per-pod series for /metrics, read from the pools at scrape time (routing never pays for them)."""

    def __init__(self, manager: BackendManager) -> None:
        self.manager = manager

    def collect(self) -> Iterator[GaugeMetricFamily]:
        state = GaugeMetricFamily(
            "hybridgate_pod_lifecycle",
            "1 for the lifecycle state each cloud pod is in",
            labels=["backend", "pod", "state"],
        )
        billed = GaugeMetricFamily(
            "hybridgate_pod_billed_seconds",
            "Seconds each pod was billed (provisioning to stop, idle included)",
            labels=["backend", "pod"],
        )
        busy = GaugeMetricFamily(
            "hybridgate_pod_utilisation", "Busy time over billed time per pod", labels=["backend", "pod"]
        )
        for b in self.manager.backends:
            if not isinstance(b, PodBackend):
                continue
            for r in b.replicas:
                pod = r.pod_id or r.name
                for s in STATES:
                    state.add_metric([b.name, pod, s], 1.0 if r.lifecycle.value == s else 0.0)
                billed.add_metric([b.name, pod], r.billed_s())
                u = r.utilisation()
                if u is not None:
                    busy.add_metric([b.name, pod], u)
        yield state
        yield billed
        yield busy


STATES = ("stopped", "provisioning", "warming", "ready", "draining", "failed")


def attach(
    manager: BackendManager,
    add_row: Callable[[dict[str, Any]], None],
    engine: Callable[[], Any],
    registry: CollectorRegistry | None = None,
) -> bool:
    """Give every pod backend the ledger's row writer (its pod-time rows) and the database (its lease);
    register the per-pod series in the gateway's metrics. False when the gateway has no pod backend."""
    pools = [b for b in manager.backends if isinstance(b, PodBackend)]
    for b in pools:
        b.cost_sink = add_row
        b.attach_store(engine)
    if pools and registry is not None:
        registry.register(PodCollector(manager))
    return bool(pools)


__all__ = ["attach", "router"]
