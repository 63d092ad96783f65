"""The mock backend: deterministic, free, contract-faithful, with faults on demand.

`MockEngine` holds the behaviour (what to answer, how fast, how to fail) and is shared by the in-process
`MockBackend` and by `hybridgate mock-server`, so both answer exactly alike.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, fields
from typing import Any

from hybridgate.backends._base import (
    Backend,
    BackendHTTPError,
    BackendRequest,
    BackendResponse,
    BackendStreamError,
)
from hybridgate.config import BackendConfig
from hybridgate.config._schema import MockOptions
from hybridgate.protocol import (
    Endpoint,
    Usage,
    chunk_body,
    completion_id,
    prompt_text,
    response_body,
    usage_chunk,
    whole_count,
)

_TOKEN = re.compile(r"\s*[\w']+|\s*[^\w\s]")
_DEFAULT_MAX_TOKENS = 64

_WORDS = (
    "the system routes each request to a healthy backend and records what it cost . "
    "a gateway keeps latency low while the model answers with care . "
    "tests run against the mock first , then against a real model for confidence . "
    "every backend reports its health , and the router falls back when one fails . "
    "small models answer quickly on a local machine , large ones run on rented GPUs . "
    "budgets hold because each call reserves its worst case before it starts ."
).split(" ")


def count_tokens(text: str) -> int:
    """The mock's tokenizer: words and punctuation, a leading space kept with its token."""
    return len(_TOKEN.findall(text))


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text)


@dataclass
class MockBehaviour:
    """Mutable copy of MockOptions, so faults can be switched on and off while a server runs."""

    latency_ms: float = 0.0
    ttft_ms: float | None = None
    tokens_per_s: float = 0.0
    fail_rate: float = 0.0
    fail_status: int = 500
    hang: bool = False
    drop_mid_stream: bool = False
    stall_mid_stream: bool = False
    seed: int = 0

    @classmethod
    def from_options(cls, o: MockOptions) -> MockBehaviour:
        return cls(**o.model_dump())

    def update(self, changes: dict[str, Any]) -> None:
        """Apply changes, validated through MockOptions so a bad value is a clear error."""
        merged = MockOptions.model_validate({**asdict(self), **changes})
        for f in fields(self):
            setattr(self, f.name, getattr(merged, f.name))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class Generation:
    tokens: list[str]
    finish_reason: str
    prompt_tokens: int

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    def usage(self) -> Usage:
        return Usage(self.prompt_tokens, len(self.tokens))


class MockEngine:
    """Decides the mock's answers and faults; knows nothing of HTTP."""

    def __init__(self, behaviour: MockBehaviour) -> None:
        self.behaviour = behaviour
        self._rng = random.Random(behaviour.seed)
        self.requests = 0

    def generate(self, endpoint: Endpoint, body: dict[str, Any]) -> Generation:
        prompt = prompt_text(body, endpoint)
        n_messages = len(body.get("messages", ())) if endpoint == "chat" else 0
        # OpenAI counts a few tokens of framing per chat message; do the same so numbers look plausible.
        prompt_tokens = count_tokens(prompt) + 3 * n_messages + (3 if n_messages else 0)
        # The limit as a server reads it: a whole number (16.0 is 16); anything else is no limit at all.
        limit = (
            whole_count(body.get("max_completion_tokens"))
            or whole_count(body.get("max_tokens"))
            or (16 if endpoint == "completions" else _DEFAULT_MAX_TOKENS)
        )
        text = self._answer(prompt)
        tokens = tokenize(text)
        finish = "stop"
        stops = body.get("stop")
        if stops:
            for s in [stops] if isinstance(stops, str) else stops:
                i = text.find(s) if s else -1
                if i >= 0:
                    text = text[:i]
            tokens = tokenize(text)
        if len(tokens) > limit:
            tokens, finish = tokens[:limit], "length"
        return Generation(tokens, finish, prompt_tokens)

    @staticmethod
    def _answer(prompt: str) -> str:
        low = prompt.lower()
        if "capital of france" in low:
            return "Paris"
        # Stable, plausible text: the same prompt always gives the same answer.
        digest = hashlib.sha256(prompt.encode()).digest()
        start = digest[0] % len(_WORDS)
        length = 12 + digest[1] % 24
        words = [_WORDS[(start + i) % len(_WORDS)] for i in range(length)]
        text = " ".join(w for w in words if w)
        text = text.replace(" .", ".").replace(" ,", ",").strip(" ,.")
        return ". ".join(s[:1].upper() + s[1:] for s in text.split(". ")) + "."

    def should_fail(self) -> bool:
        b = self.behaviour
        return b.fail_rate > 0 and self._rng.random() < b.fail_rate

    def failure_body(self) -> dict[str, Any]:
        s = self.behaviour.fail_status
        return {
            "error": {
                "message": f"mock: injected failure (status {s})",
                "type": "server_error" if s >= 500 else "invalid_request_error",
                "param": None,
                "code": "mock_injected_failure",
            }
        }

    async def before_answer(self, stream: bool) -> None:
        """Hang if told to, then wait the configured latency (time to first token for streams)."""
        self.requests += 1
        b = self.behaviour
        if b.hang:
            await asyncio.Event().wait()
        delay = b.ttft_ms if (stream and b.ttft_ms is not None) else b.latency_ms
        if delay:
            await asyncio.sleep(delay / 1000)

    def token_delay(self) -> float:
        tps = self.behaviour.tokens_per_s
        return 1.0 / tps if tps > 0 else 0.0

    def respond(
        self, endpoint: Endpoint, body: dict[str, Any], model: str
    ) -> tuple[dict[str, Any], Generation]:
        gen = self.generate(endpoint, body)
        return response_body(
            endpoint, completion_id(endpoint), model, gen.text, gen.finish_reason, gen.usage()
        ), gen

    async def chunks(
        self, endpoint: Endpoint, body: dict[str, Any], model: str
    ) -> AsyncIterator[dict[str, Any] | None]:
        """Stream chunks; yields None where a mid-stream drop is injected, and blocks there for a stall."""
        gen = self.generate(endpoint, body)
        id_, created = completion_id(endpoint), int(time.time())
        delay = self.token_delay()
        if endpoint == "chat":
            yield chunk_body(endpoint, id_, model, created, role=True)
        b = self.behaviour
        drop_at = max(1, len(gen.tokens) // 2) if (b.drop_mid_stream or b.stall_mid_stream) else -1
        for i, tok in enumerate(gen.tokens):
            if i == drop_at:
                if b.stall_mid_stream:
                    await asyncio.Event().wait()  # stop sending, keep the connection open
                yield None
                return
            if delay and i:
                await asyncio.sleep(delay)
            yield chunk_body(endpoint, id_, model, created, text=tok)
        yield chunk_body(endpoint, id_, model, created, finish_reason=gen.finish_reason)
        yield usage_chunk(endpoint, id_, model, created, gen.usage())


class MockBackend(Backend):
    """The mock, in process: no sockets, no cost. Its options: `mock:` or `options:`, the same knobs."""

    Options = MockOptions

    def __init__(self, config: BackendConfig) -> None:
        super().__init__(config)
        self.engine = MockEngine(MockBehaviour.from_options(self.options))

    @classmethod
    def parse_options(cls, config: BackendConfig) -> MockOptions:
        if config.options:
            return MockOptions.model_validate(
                {**config.mock.model_dump(exclude_unset=True), **config.options}
            )
        return config.mock

    async def _maybe_fail(self, stream: bool) -> None:
        if self.engine.should_fail():
            s = self.engine.behaviour.fail_status
            raise BackendHTTPError(
                f"HTTP {s}: mock: injected failure", status=s, body=self.engine.failure_body()
            )
        await self.engine.before_answer(stream)

    async def complete(self, req: BackendRequest) -> BackendResponse:
        await self._maybe_fail(False)
        body, gen = self.engine.respond(req.endpoint, req.body, str(req.body.get("model", "mock")))
        delay = self.engine.token_delay()
        if delay:
            await asyncio.sleep(delay * len(gen.tokens))
        return BackendResponse(body, gen.usage())

    async def stream(self, req: BackendRequest) -> AsyncIterator[dict[str, Any]]:
        await self._maybe_fail(True)
        async for chunk in self.engine.chunks(req.endpoint, req.body, str(req.body.get("model", "mock"))):
            if chunk is None:
                raise BackendStreamError("mock: connection dropped mid-stream (injected)")
            yield chunk

    async def check_health(self) -> None:
        if self.engine.behaviour.hang:
            await asyncio.Event().wait()
