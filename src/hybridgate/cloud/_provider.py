"""One interface for every cloud GPU provider: launch, status, endpoint, stop, start (resume), terminate,
cost. The pod pool (`backends/pod.py`) speaks only this; a provider module speaks its cloud's API."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class PodStatus(StrEnum):
    """The provider's view of a pod, normalised."""

    RUNNING = "running"  # billed; may still be pulling its image (no endpoint yet)
    STOPPED = "stopped"  # resumable, not billed for GPU
    TERMINATED = "terminated"  # gone
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class PodSpec:
    """What to launch. GPU types and data centres are tried in order until one has capacity."""

    name: str
    image: str
    gpu_types: tuple[str, ...]
    data_centers: tuple[str | None, ...] = (None,)
    gpu_count: int = 1
    cloud_type: str = "SECURE"
    # The port the model server listens on inside the pod (exposed as http).
    port: int = 8000
    docker_args: str = ""
    env: dict[str, str] = field(default_factory=dict)
    container_disk_gb: int = 20
    volume_gb: int = 0
    # Interruptible: the provider may take the GPU back at any time (cheaper). `bid_per_gpu` is USD per hour
    # per GPU; None: the GPU type's current minimum bid.
    spot: bool = False
    bid_per_gpu: float | None = None
    # Values the model server needs that must not be logged (e.g. its API key). SkyPilot passes them as
    # task `secrets`; RunPod has no such notion and does not send them.
    secrets: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PodInfo:
    """A pod as the provider reports it now."""

    id: str
    name: str
    status: PodStatus
    cost_per_hr: float
    # The OpenAI-compatible base URL of its model server (".../v1"); None until the provider shows one.
    endpoint: str | None = None
    gpu: str | None = None
    data_center: str | None = None


class Provider(ABC):
    """A cloud's GPU pods. Every method raises only `CloudError` subclasses."""

    name: str = "provider"

    @abstractmethod
    async def launch(self, spec: PodSpec, *, notes: list[str] | None = None) -> PodInfo:
        """Create a pod, trying `spec.gpu_types` x `spec.data_centers` in order on capacity errors.

        `notes` collects what happened on the way (each capacity miss), for the pool's event log."""

    @abstractmethod
    async def status(self, pod_id: str) -> PodInfo | None:
        """The pod now; None when it no longer exists."""

    @abstractmethod
    async def list(self) -> list[PodInfo]:
        """Every pod of this account."""

    @abstractmethod
    async def stop(self, pod_id: str) -> None:
        """Stop a pod (resumable; the GPU is released)."""

    @abstractmethod
    async def start(self, pod_id: str, gpu_count: int = 1) -> PodInfo:
        """Resume a stopped pod. Raises CloudResumeError when its host cannot take it back."""

    @abstractmethod
    async def terminate(self, pod_id: str) -> None:
        """Delete a pod for good. A pod already gone is not an error."""

    # Seconds between `heartbeat` calls for each running pod (None: the provider needs none).
    heartbeat_s: float | None = None

    async def heartbeat(self, pod_id: str) -> None:
        """The gateway is alive and still uses this pod (re-arms a provider-side dead-man timer)."""

    def endpoint(self, info: PodInfo) -> str | None:
        return info.endpoint

    def cost(self, info: PodInfo) -> float:
        """USD per hour the pod bills now."""
        return info.cost_per_hr

    async def close(self) -> None:
        """Release HTTP clients."""


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}$")


def check_name(value: str, what: str) -> str:
    """A name we send to a provider: letters, digits, `_.-`, at most 63 characters."""
    if not _NAME.match(value):
        from hybridgate.cloud._errors import CloudInputError

        raise CloudInputError(
            f"{what} {value!r} is not a valid name: use letters, digits, '_', '.', '-' (at most 63)"
        )
    return value


def describe(info: PodInfo) -> dict[str, Any]:
    return {
        "id": info.id,
        "name": info.name,
        "status": info.status.value,
        "cost_per_hr": info.cost_per_hr,
        "endpoint": info.endpoint,
        "gpu": info.gpu,
        "data_center": info.data_center,
    }


__all__ = ["PodInfo", "PodSpec", "PodStatus", "Provider", "check_name", "describe"]
