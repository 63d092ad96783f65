"""The inference service: everything a chat or completion call does between the bytes in and the bytes out."""

from __future__ import annotations

import itertools
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hybridgate.protocol import Operation, PermissionDeniedError, parse_request
from hybridgate.router import Attempt, BackendManager, Call, CallHooks, Result, Stream

if TYPE_CHECKING:
    from hybridgate.auth import Principal


@dataclass(slots=True)
class Prepared:
    """A validated, authorised call, and how the client wants its answer."""

    call: Call
    stream: bool
    include_usage: bool


class InferenceService:
    """Chat and completions for one gateway: built once with its router and its per-call policy."""

    __slots__ = ("complete", "hooks_for", "manager", "open_stream")

    def __init__(self, manager: BackendManager, hooks_for: Callable[[Principal, str], CallHooks]) -> None:
        self.manager = manager
        self.hooks_for = hooks_for
        # The router's own methods, bound once: a wrapper would cost a coroutine per call on the hot path.
        # complete(call) -> Result: the answer of a non-streamed call, its model the public name asked for.
        self.complete: Callable[[Call], Awaitable[Result]] = manager.complete
        # open_stream(call) -> Stream: a stream whose first chunk has arrived (fallback is over by then).
        self.open_stream: Callable[[Call], Awaitable[Stream]] = manager.open_stream

    def prepare(
        self,
        operation: Operation,
        raw: bytes,
        principal: Principal,
        request_id: str,
        *,
        forced: str | None = None,
        preferred: str | None = None,
    ) -> Prepared:
        """Parse and validate the body, check the key may use the model, apply its rate limit, build the Call.

        Raises a GatewayError (400, 403, 429...) the client should see.
        """
        body, req = parse_request(raw, operation)
        allowed = principal.allowed_models
        if allowed and req.model not in allowed:
            raise PermissionDeniedError(
                f"This API key may not use model '{req.model}'; it may use: {', '.join(allowed)}.",
                param="model",
            )
        call = Call(
            endpoint=operation,
            body=body,
            model=req.model,
            max_tokens=req.limit(),
            forced=forced,
            preferred=preferred,
            hooks=self.hooks_for(principal, request_id),
        )
        include_usage = bool(req.stream and req.stream_options and req.stream_options.include_usage)
        return Prepared(call, req.stream, include_usage)

    @staticmethod
    def shape(batch: list[dict[str, Any]], model: str, include_usage: bool) -> list[dict[str, Any]]:
        """The chunks of one group as the client sees them: the public model name, and the usage rule.

        Usage is always asked of backends (so streams can be costed); the client gets it only when it asked
        (`stream_options.include_usage`): then the usage-only chunk passes, else it is dropped and usage is
        removed from any other chunk that carries it.
        """
        out = []
        for chunk in batch:
            chunk["model"] = model
            if "usage" in chunk:
                if not chunk.get("choices"):
                    if not include_usage:
                        continue
                elif not include_usage:
                    del chunk["usage"]
            out.append(chunk)
        return out


def attempt_headers(
    backend: str | None, attempts: list[Attempt] | None, cost: float | None, request_id: str
) -> list[tuple[bytes, bytes]]:
    """x-request-id, and which backend answered after how many tries, at what cost, when known."""
    h = [(b"x-request-id", request_id.encode())]
    if not attempts:
        return h
    h.append((b"x-hybridgate-attempts", str(sum(1 for a in attempts if a.reached_backend)).encode()))
    if backend is not None:
        h.append((b"x-hybridgate-backend", backend.encode()))
    if cost is not None:
        h.append((b"x-hybridgate-cost-usd", f"{cost:.8f}".encode()))
    return h


_ID_PREFIX = os.urandom(4).hex()
_ids = itertools.count(1)


def request_id(given: str | None) -> str:
    """The client's X-Request-Id, or a process-unique one (no syscall per request, unlike os.urandom)."""
    return given or f"{_ID_PREFIX}{next(_ids):08x}"


__all__ = ["InferenceService", "Prepared", "attempt_headers", "request_id"]
