"""Server-sent events read off the wire, and the OpenAI stream contract checked event by event as they arrive.

The order the contract asks for: (chat) a role announcement, content deltas, one chunk with the finish reason,
the usage chunk when `stream_options.include_usage` was set, then `data: [DONE]`, and nothing after it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

import orjson

from hybridgate.testing.check._context import CheckFailed
from hybridgate.testing.check._schema import CHAT_CHUNK, TEXT_CHUNK, check, observe


def iter_sse(lines: Iterable[str]) -> Iterator[str]:
    """Each event's data as soon as its blank line arrives; comment lines (`: ...`) are skipped."""
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if name == "data":
            data.append(value[1:] if value.startswith(" ") else value)
    if data:  # an unterminated last event: surface it, so a truncated stream is visible
        yield "\n".join(data)


def _compress(kinds: list[str]) -> str:
    """`role,content*,finish,usage,[DONE]`: a run of content deltas is one `content*`, however long."""
    out: list[str] = []
    for k in kinds:
        k = "content*" if k == "content" else k
        if not (out and out[-1] == k == "content*"):
            out.append(k)
    return ",".join(out)


class StreamChecker:
    """Feed it each event's data; it raises CheckFailed at the first event that breaks the contract."""

    def __init__(self, endpoint: str, include_usage: bool, started: float | None = None) -> None:
        self.chat = endpoint == "chat"
        self.include_usage = include_usage
        self.started = time.perf_counter() if started is None else started
        self.state = "start"
        self.kinds: list[str] = []
        self.fields: dict[str, str] = {}
        self.text: list[str] = []
        self.ids: set[str] = set()
        self.ttft_ms: float | None = None
        self.usage: dict[str, Any] | None = None
        self.finish_reason: str | None = None
        self.usage_in_choice_chunks = False
        self.done = False

    def _fail(self, msg: str) -> CheckFailed:
        return CheckFailed(f"event {len(self.kinds) + 1} ({_compress(self.kinds) or 'first'} so far): {msg}")

    def feed(self, data: str) -> None:
        if self.done:
            raise self._fail(f"data after [DONE]: {data[:120]!r}")
        if data == "[DONE]":
            if self.state not in ("finish", "usage"):
                raise self._fail("[DONE] arrived before any chunk carried a finish_reason")
            if self.include_usage and self.state != "usage":
                raise self._fail(
                    "[DONE] arrived without the usage chunk that stream_options.include_usage asks for"
                )
            self.kinds.append("[DONE]")
            self.done = True
            return
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise self._fail(f"not JSON: {data[:120]!r}") from None
        if isinstance(obj, dict) and "error" in obj:
            raise self._fail(
                f"the stream carried an error event: {orjson.dumps(obj['error']).decode()[:300]}"
            )
        problems = check(obj, CHAT_CHUNK if self.chat else TEXT_CHUNK, "chunk")
        if problems:
            raise self._fail("; ".join(problems))
        self.ids.add(obj["id"])
        if len(self.ids) > 1:
            raise self._fail(f"chunks of one stream carry different ids: {sorted(self.ids)}")
        choices = obj["choices"]
        if not choices:
            observe(obj, "usage_chunk", self.fields)
            if not isinstance(obj.get("usage"), dict):
                raise self._fail("a chunk with no choices and no usage")
            if not self.include_usage:
                raise self._fail("a usage chunk arrived although stream_options.include_usage was not set")
            if self.state != "finish":
                raise self._fail("the usage chunk must come after the finish_reason chunk, once")
            self.usage = obj["usage"]
            self._step("usage")
            return
        observe(obj, "chunk", self.fields)
        if len(choices) != 1:
            raise self._fail(f"{len(choices)} choices in a chunk; n=1 was requested")
        if isinstance(obj.get("usage"), dict):
            self.usage_in_choice_chunks = True
        c = choices[0]
        delta = c.get("delta") or {}
        text = delta.get("content") if self.chat else c.get("text")
        if self.chat and "role" in delta:
            if self.state != "start":
                raise self._fail("the role is announced again mid-stream")
            kind = "role"
        elif self.chat and self.state == "start":
            raise self._fail(f"the first chunk does not announce role 'assistant': {data[:160]}")
        else:
            kind = "content"
        if self.state in ("finish", "usage"):
            raise self._fail("a choice chunk arrived after the finish_reason")
        if text:
            self.text.append(text)
            if self.ttft_ms is None:
                self.ttft_ms = (time.perf_counter() - self.started) * 1000
        if c.get("finish_reason") is not None:
            self.finish_reason = c["finish_reason"]
            kind = "finish"
        self._step(kind)

    def _step(self, kind: str) -> None:
        self.kinds.append(kind)
        self.state = kind if kind in ("finish", "usage") else "content"

    def end(self) -> None:
        """The connection closed; the stream must have ended with [DONE]."""
        if not self.done:
            raise self._fail("the stream ended without data: [DONE] (truncated)")

    @property
    def events(self) -> str:
        """The event order, runs collapsed: `role,content*,finish,usage,[DONE]`."""
        return _compress(self.kinds)
