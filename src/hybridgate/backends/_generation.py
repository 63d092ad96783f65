"""Generation backends: providers that take a job (an image, a video, a LoRA training), run it for seconds to
hours, and hand back files. The durable jobs engine (`hybridgate.jobs`) drives them step by step:

    submit -> (status ... status) -> result -> the media downloaded into storage

`submit` must send the job **once**: no automatic retry of the request that creates billed work. Everything
after it (status, result, cancel, downloads) is read-only or idempotent and may be retried freely.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from hybridgate.backends._base import Backend, BackendError, BackendRequest, BackendResponse
from hybridgate.protocol import Operation, Usage

GENERATION_OPERATIONS = frozenset(
    {Operation.IMAGE_GENERATION, Operation.VIDEO_GENERATION, Operation.LORA_TRAINING}
)


class SubmitOutcomeUnknownError(BackendError):
    """The submit request may have reached the provider (it timed out or the connection broke after it was
    sent): it must not be sent again, and it is not safe to try another backend either."""

    retryable = False


class ResultGoneError(BackendError):
    """The provider no longer has the result (it expired before it was copied)."""

    retryable = False


@dataclass(slots=True)
class Submitted:
    """What the provider answered to a submit: its request id and whatever it needs to follow it."""

    request_id: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class ProviderStatus:
    state: Literal["queued", "running", "completed", "failed", "cancelled"]
    queue_position: int | None = None
    logs: list[dict[str, Any]] = field(default_factory=list)
    progress: float | None = None
    error: str | None = None
    error_type: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Media:
    """One file of a result, to be copied into storage."""

    role: str  # "image", "video", "lora_weights", "lora_config"
    url: str
    content_type: str | None = None
    file_name: str | None = None


class GenerationBackend(Backend):
    """Base of the generation kinds (fal, comfyui). Not a chat backend: `complete`/`stream` refuse."""

    operations: ClassVar[frozenset[Operation]] = GENERATION_OPERATIONS
    enforces_timeouts = True

    async def complete(self, req: BackendRequest) -> BackendResponse:
        raise BackendError(
            f"backend '{self.name}' (kind {self.kind}) runs generation jobs, not {req.endpoint}"
        )

    async def stream(self, req: BackendRequest) -> AsyncIterator[dict[str, Any]]:
        raise BackendError(
            f"backend '{self.name}' (kind {self.kind}) runs generation jobs, not {req.endpoint}"
        )
        yield {}  # pragma: no cover - makes this an async generator

    # --- the job protocol -----------------------------------------------------------------------
    def provider_input(self, operation: str, model: str, job_input: dict[str, Any]) -> dict[str, Any]:
        """The provider's arguments for a job's validated input (LoRA references already resolved)."""
        raise NotImplementedError

    async def submit(
        self, model: str, arguments: dict[str, Any], *, job_id: str, webhook_url: str | None
    ) -> Submitted:
        """Send the job once. BackendConnectError when it surely never arrived (safe to fall back);
        SubmitOutcomeUnknownError when it may have; BackendHTTPError for the provider's refusal."""
        raise NotImplementedError

    async def status(self, model: str, ref: Submitted, *, logs: bool = True) -> ProviderStatus:
        raise NotImplementedError

    async def result(self, model: str, ref: Submitted) -> dict[str, Any]:
        """The output (ResultGoneError when expired; BackendHTTPError with the provider's error)."""
        raise NotImplementedError

    async def cancel(self, model: str, ref: Submitted) -> str:
        """Ask the provider to stop; its answer ("OK", "ALREADY_COMPLETED"...)."""
        raise NotImplementedError

    def media(self, operation: str, result: dict[str, Any]) -> list[Media]:
        """The files of a result, to copy into storage."""
        raise NotImplementedError

    def usage(
        self,
        operation: str,
        job_input: dict[str, Any],
        result: dict[str, Any] | None,
        status: ProviderStatus | None,
        seconds: float,
    ) -> Usage:
        """What the job used, in the ledger's units (images, GPU-seconds, requests)."""
        return Usage(requests=1)

    def download(self, url: str) -> AsyncIterator[bytes]:
        """A result file's bytes, streamed."""
        raise NotImplementedError

    async def upload(self, data: bytes, content_type: str, file_name: str) -> str:
        """Put an input file (a training archive) where the provider can read it; its URL."""
        raise NotImplementedError

    def verify_webhook(self, headers: dict[str, str], body: bytes) -> Any:
        """Check a provider's webhook; raise ValueError saying why it is not authentic."""
        raise ValueError(f"backend '{self.name}' takes no webhooks")


__all__ = [
    "GENERATION_OPERATIONS",
    "GenerationBackend",
    "Media",
    "ProviderStatus",
    "ResultGoneError",
    "SubmitOutcomeUnknownError",
    "Submitted",
]
