"""The Backend interface every adapter implements, and the failures it may raise.

The router decides what to do with a failure from its class alone: `retryable` failures move on to the
next backend, the others are the client's own and go back to it unchanged.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from hybridgate.config import BackendConfig
from hybridgate.protocol import Endpoint, Operation, Usage


class Lifecycle(StrEnum):
    """Where a backend is in its life. Only `ready` takes calls; `provisioning` and `warming` are worth
    waiting for (a request waits a bounded time for one), `stopped`, `draining` and `failed` are not.

    stopped -> provisioning -> warming -> ready -> draining -> stopped, and failed from anywhere.
    """

    STOPPED = "stopped"
    PROVISIONING = "provisioning"
    WARMING = "warming"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"

    @property
    def coming(self) -> bool:
        """On its way to ready: a request may wait for it."""
        return self in (Lifecycle.PROVISIONING, Lifecycle.WARMING)


class NoOptions(BaseModel):
    """The options model of a kind that takes none: any key is a typo, and an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(slots=True)
class BackendRequest:
    """A validated request, rewritten for one backend (its own model name in `body["model"]`)."""

    endpoint: Endpoint
    body: dict[str, Any]
    public_model: str
    max_tokens: int | None = None


@dataclass(slots=True)
class BackendResponse:
    body: dict[str, Any]
    usage: Usage = field(default_factory=Usage)


class Batch(list[dict[str, Any]]):
    """The chunks of one network read. `last` when the stream ended with them ([DONE] in the same read), so
    the gateway can write them together with the stream's tail: one write to the client instead of two.

    `raw`, optional: these very events as SSE bytes, as the backend sent them (`data: {...}` lines, each
    ended by a blank line; no `[DONE]`). An adapter that has them sets it, and the gateway writes them on
    untouched when nothing in the chunks must change for the client (the public model name is already
    there, no usage to strip), instead of re-serialising every chunk. The chunks stay the contract: they
    are what the router reads (usage, text) and what is written when something must change.
    """

    __slots__ = ("last", "raw")

    def __init__(self, chunks: list[dict[str, Any]], last: bool = False, raw: bytes | None = None) -> None:
        super().__init__(chunks)
        self.last = last
        self.raw = raw


class BackendError(Exception):
    """A backend could not serve a request."""

    retryable = True
    # Whether this failure counts towards tripping the backend's circuit breaker.
    marks_unhealthy = True
    status: int | None = None

    def __init__(self, message: str, *, status: int | None = None, body: Any = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.body = body


class BackendConnectError(BackendError):
    """The backend could not be reached (refused, reset, DNS, TLS)."""


class BackendTimeoutError(BackendError):
    """Connect, time-to-first-byte, answer or total deadline passed.

    `maybe_billed`: the request reached the backend, which may have generated (and will bill) an answer
    nobody received; the attempt is then recorded at its estimated cost."""

    def __init__(
        self, message: str, *, status: int | None = None, body: Any = None, maybe_billed: bool = False
    ):
        super().__init__(message, status=status, body=body)
        self.maybe_billed = maybe_billed


class BackendUnavailableError(BackendError):
    """The backend is up but cannot take the request now (loading, queue full): busy is not unhealthy."""

    marks_unhealthy = False


class BackendModelMissingError(BackendError):
    """The backend says it does not serve the model the config maps to it ("model not found").

    The operator's mistake, not the client's and not the backend's health: the router falls back to the
    next backend and shows the reason in /health/backends; the client never sees it as a 404."""

    marks_unhealthy = False


class BackendStreamError(BackendError):
    """A stream broke after it started (dropped connection, error event, malformed data)."""


class BackendHTTPError(BackendError):
    """The backend answered with an error status. 429 and 5xx are retryable; other 4xx are the client's."""

    def __init__(self, message: str, *, status: int, body: Any = None) -> None:
        super().__init__(message, status=status, body=body)
        self.retryable = status == 429 or status >= 500


class Backend(ABC):
    """One place a model runs. Created from config; started and closed by whoever owns it (the router).

    A kind declares what it can do (`operations`), what its `options` look like (`Options`, validated in
    `__init__`, so a bad option fails the config load), and where it is in its life (`lifecycle`).
    """

    # True when the adapter enforces `timeouts` itself (on its sockets); otherwise the router bounds each
    # attempt with an asyncio timer, which costs a few microseconds a call.
    enforces_timeouts = False
    operations: ClassVar[frozenset[Operation]] = frozenset({Operation.CHAT, Operation.COMPLETIONS})
    Options: ClassVar[type[BaseModel]] = NoOptions
    # Whether an active health check costs nothing (a GET on a local server); a paid hosted API is False,
    # and its backends are checked passively unless the config says otherwise.
    free_health_checks: ClassVar[bool] = True

    def __init__(self, config: BackendConfig) -> None:
        self.config = config
        self.name = config.name
        self.kind: str = config.kind
        try:
            self.options: Any = self.parse_options(config)
        except ValidationError as e:
            errs = "; ".join(
                f"options.{'.'.join(str(p) for p in err['loc']) or '<all>'}: {err['msg']}"
                for err in e.errors()
            )
            raise ValueError(
                f"backend '{config.name}' (kind {config.kind}) has invalid options: {errs}"
            ) from None

    @classmethod
    def parse_options(cls, config: BackendConfig) -> BaseModel:
        """The kind's typed options from `config.options` (raises pydantic's ValidationError)."""
        return cls.Options.model_validate(config.options)

    def implements(self, operation: str) -> bool:
        return operation in self.operations

    @property
    def ready(self) -> bool:
        """False while the backend is still starting (a model loading); it is not routable until then."""
        return True

    @property
    def state(self) -> str:
        """The adapter's own word for its state (e.g. llamacpp's "loading"); `lifecycle` is the shared one."""
        return "ready" if self.ready else "loading"

    @property
    def lifecycle(self) -> Lifecycle:
        return Lifecycle.READY if self.ready else Lifecycle.WARMING

    async def start(self) -> None:
        """Open pools or begin loading; must return quickly (long work goes in a background task)."""

    async def close(self) -> None:
        """Release pools, threads and models."""

    @abstractmethod
    async def complete(self, req: BackendRequest) -> BackendResponse:
        """Answer a non-streamed request."""

    @abstractmethod
    def stream(self, req: BackendRequest) -> AsyncIterator[dict[str, Any]]:
        """Yield OpenAI stream chunks (parsed) as the backend produces them; a usage chunk last if known."""

    async def stream_batches(self, req: BackendRequest) -> AsyncIterator[list[dict[str, Any]]]:
        """The same chunks, grouped as they arrived, so the gateway writes each group to its client at once.

        One chunk per group by default; adapters that receive several at a time (over HTTP) override it, and
        may yield a `Batch` whose `last` says the stream ended with it.
        """
        async for chunk in self.stream(req):
            yield [chunk]

    async def served_models(self) -> list[str] | None:
        """The backend's own model names it says it serves, for a check at start; None: cannot tell."""
        return None

    @abstractmethod
    async def check_health(self) -> None:
        """Return when healthy; raise BackendError saying why when not."""
