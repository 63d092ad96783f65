"""Cloud GPU capacity: providers behind one interface, and the replica-count decision of a pod pool.

The pool itself is the `pod` backend kind (`backends/pod.py`): the router routes to it like any backend.
"""

from __future__ import annotations

from typing import Any

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
from hybridgate.cloud._provider import PodInfo, PodSpec, PodStatus, Provider

PROVIDERS = ("runpod", "skypilot")


def make_provider(
    name: str,
    api_key: str | None,
    *,
    base_url: str | None = None,
    port: int = 8000,
    settings: Any = None,
) -> Provider:
    """The provider called `name`, imported only when used. `settings`: the provider's own settings
    (SkyPilot: a `SkyPilotSettings`)."""
    if name == "runpod":
        from hybridgate.cloud.runpod import RunPodProvider

        return RunPodProvider(api_key, base_url=base_url, port=port)
    if name == "skypilot":
        from hybridgate.cloud.skypilot import SkyPilotProvider

        return SkyPilotProvider(settings, api_key=api_key, port=port)
    raise CloudInputError(f"unknown cloud provider {name!r}; known: {', '.join(PROVIDERS)}")


__all__ = [
    "PROVIDERS",
    "CloudAuthError",
    "CloudCapacityError",
    "CloudError",
    "CloudInputError",
    "CloudMalformedError",
    "CloudNotFoundError",
    "CloudProviderError",
    "CloudResumeError",
    "CloudSetupError",
    "CloudUnavailableError",
    "PodInfo",
    "PodSpec",
    "PodStatus",
    "Provider",
    "make_provider",
]
