"""OpenAI request models (validated at the edge) and the small helpers to build responses.

Validation is deliberately about what the gateway must understand (model, messages, stream, limits);
unknown fields are allowed and forwarded untouched, as OpenAI-compatible servers add their own.
"""

from __future__ import annotations

import math
import os
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from hybridgate.protocol._errors import BadRequestError
from hybridgate.protocol._operations import Endpoint, Usage

# Deepest nesting of objects and arrays a request may have. Real requests (tool schemas included) stay far
# below; past a few hundred levels the body cannot even be re-encoded for a backend (orjson's limit is 254).
MAX_DEPTH = 64


def _whole(v: Any) -> Any:
    """64.0 is the integer 64, as OpenAI reads it; 64.5 stays a float and is refused."""
    if isinstance(v, float) and v.is_integer() and abs(v) < 2**63:  # JSON integers are 64-bit here
        return int(v)
    return v


def _null_is_false(v: Any) -> Any:
    return False if v is None else v


# `"stream": null` is OpenAI's default, not streaming.
_Flag = Annotated[bool, BeforeValidator(_null_is_false)]


def whole_count(v: Any) -> int | None:
    """A non-negative whole number from a JSON value as sent (16 or 16.0), else None: how servers read a
    limit or a count (max_tokens, n, best_of) that may not have been validated."""
    if v is None:
        return None
    if v.__class__ is int:  # the usual case, decided without the float checks below
        return v if v >= 0 else None
    if isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v < math.inf and v == int(v):
        return int(v)
    return None


# An integer that may be written as a whole float (OpenAI accepts `"n": 2.0`), strict otherwise.
_Int = Annotated[int, BeforeValidator(_whole)]


class _Open(BaseModel):
    # strict: "yes" is not a boolean and "0.5" is not a number, as OpenAI itself answers.
    model_config = ConfigDict(extra="allow", strict=True)


class StreamOptions(_Open):
    include_usage: bool = False


class ChatMessage(_Open):
    role: Literal["system", "user", "assistant", "tool", "developer", "function"]
    content: str | list[dict[str, Any]] | None = None


_Stop = str | Annotated[list[str], Field(max_length=4)] | None


class _Sampling(_Open):
    model: str = Field(min_length=1)
    stream: _Flag = False
    stream_options: StreamOptions | None = None
    max_tokens: _Int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    n: _Int | None = Field(None, ge=1, le=128)
    stop: _Stop = None
    seed: _Int | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: _Int | None = Field(None, ge=1)

    def limit(self) -> int | None:
        """The output bound a backend applies: max_completion_tokens, which replaced max_tokens, first."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_Sampling):
    # A string, strings, token ids or lists of token ids; null is OpenAI's <|endoftext|> (an empty prompt).
    prompt: str | list[str] | list[int] | list[list[int]] | None
    # The legacy endpoint takes 0 (with echo and logprobs, to score a prompt without generating).
    max_tokens: _Int | None = Field(None, ge=0)
    best_of: _Int | None = Field(None, ge=1, le=20)

    def limit(self) -> int | None:
        # OpenAI's legacy endpoint defaults to 16 tokens.
        return self.max_tokens if self.max_tokens is not None else 16


def _param(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif (
            part in ("str", "list[str]", "list[dict[str,any]]")
            or "[" in str(part)
            or "function-" in str(part)
        ):
            # union-member tags pydantic adds to the location; not part of the field path
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or "body"


def parse_request(
    raw: bytes, endpoint: Endpoint
) -> tuple[dict[str, Any], ChatCompletionRequest | CompletionRequest | Accepted]:
    """Parse and validate a request body; returns the raw dict (forwarded) and what was validated (the
    pydantic model, or for the common plainly valid body the same values checked by hand: `Accepted`)."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise BadRequestError(f"The request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise BadRequestError("The request body must be a JSON object.", code="invalid_json")
    # Counting brackets is C-fast; only a body with that many can nest that deep (strings included).
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH:
        _check_depth(data)
    chat = endpoint == "chat"
    req: ChatCompletionRequest | CompletionRequest | Accepted | None = _accept(data, chat)
    if req is None:
        req = _validate(data, ChatCompletionRequest if chat else CompletionRequest)
    # What was validated is what is sent: a count written as 16.0 goes upstream as 16, which every server
    # reads (some slice with it, and a 500 there would count against that backend).
    for name in _COUNTS:
        v = data.get(name)
        if v.__class__ is float:
            data[name] = _whole(v)
    return data, req


def _validate(
    data: dict[str, Any], model_cls: type[ChatCompletionRequest] | type[CompletionRequest]
) -> ChatCompletionRequest | CompletionRequest:
    """pydantic's validation, its first error as OpenAI's 400."""
    try:
        return model_cls.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        param = _param(tuple(err["loc"]))
        msg = err["msg"]
        if err["type"] == "missing":
            msg = f"Missing required parameter: '{param}'."
        else:
            msg = f"Invalid value for '{param}': {msg}."
        raise BadRequestError(
            msg,
            param=param,
            code="invalid_value" if err["type"] != "missing" else "missing_required_parameter",
        ) from None


class AcceptedOptions:
    """`stream_options` of a body `_accept` let through: what StreamOptions would hold."""

    __slots__ = ("include_usage",)

    def __init__(self, include_usage: bool) -> None:
        self.include_usage = include_usage


class Accepted:
    """What the gateway reads of a body `_accept` let through, with the values pydantic would give."""

    __slots__ = ("_limit", "model", "stream", "stream_options")

    def __init__(
        self, model: str, stream: bool, stream_options: AcceptedOptions | None, limit: int | None
    ) -> None:
        self.model = model
        self.stream = stream
        self.stream_options = stream_options
        self._limit = limit

    def limit(self) -> int | None:
        """The output bound a backend applies (as ChatCompletionRequest.limit / CompletionRequest.limit)."""
        return self._limit


_ROLES = frozenset(("system", "user", "assistant", "tool", "developer", "function"))
# Fields a number of either kind may fill, with their bounds (as _Sampling declares them).
_RANGES = (("temperature", 0, 2), ("top_p", 0, 1), ("presence_penalty", -2, 2), ("frequency_penalty", -2, 2))
_I64 = 2**63


def _accept(data: dict[str, Any], chat: bool) -> Accepted | None:
    """The common body checked by hand, about three times faster than the pydantic model; None as soon as
    anything is not plainly valid (a float count, content parts, a value out of range, a missing field...),
    and pydantic then decides and words the error. So it lets through only bodies the models accept, with
    the same values (tests/test_hot_path.py compares the two on generated bodies)."""
    model = data.get("model")
    if model.__class__ is not str or not model:
        return None
    stream = data.get("stream")
    if stream is None:
        stream = False
    elif stream.__class__ is not bool:
        return None
    so = data.get("stream_options")
    options = None
    if so is not None:
        if so.__class__ is not dict:
            return None
        iu = so.get("include_usage", False)
        if iu.__class__ is not bool:
            return None
        options = AcceptedOptions(iu)
    for name, lo, hi in _RANGES:
        v = data.get(name)
        if v is not None and not ((v.__class__ is float or v.__class__ is int) and lo <= v <= hi):
            return None
    n = data.get("n")
    if n is not None and not (n.__class__ is int and 1 <= n <= 128):
        return None
    seed = data.get("seed")
    if seed is not None and not (seed.__class__ is int and -_I64 <= seed < _I64):
        return None
    stop = data.get("stop")
    if stop is not None and stop.__class__ is not str:
        if stop.__class__ is not list or len(stop) > 4:
            return None
        for s in stop:
            if s.__class__ is not str:
                return None
    mt = data.get("max_tokens")
    if mt is not None and not (mt.__class__ is int and mt >= (1 if chat else 0) and mt < _I64):
        return None
    if not chat:
        prompt = data.get("prompt", _ABSENT)
        if prompt is not None and prompt.__class__ is not str:
            return None  # absent (an error), token ids, batches: pydantic's
        best_of = data.get("best_of")
        if best_of is not None and not (best_of.__class__ is int and 1 <= best_of <= 20):
            return None
        return Accepted(model, stream, options, mt if mt is not None else 16)
    mct = data.get("max_completion_tokens")
    if mct is not None and not (mct.__class__ is int and 1 <= mct < _I64):
        return None
    messages = data.get("messages")
    if messages.__class__ is not list or not messages:
        return None
    for m in messages:
        if m.__class__ is not dict:
            return None
        role = m.get("role")
        if role.__class__ is not str or role not in _ROLES:
            return None
        content = m.get("content")
        if content is not None and content.__class__ is not str:
            if content.__class__ is not list:
                return None
            for part in content:
                if part.__class__ is not dict:
                    return None
    return Accepted(model, stream, options, mct if mct is not None else mt)


_ABSENT = object()


# Integer fields a client may write as whole floats (validated by `_Int`).
_COUNTS = ("max_tokens", "max_completion_tokens", "n", "best_of", "seed")


def _check_depth(data: dict[str, Any]) -> None:
    """400 naming the field where the body nests deeper than MAX_DEPTH objects and arrays."""
    stack: list[tuple[Any, int, str]] = [(data, 1, "")]
    while stack:
        node, depth, path = stack.pop()
        if depth > MAX_DEPTH:
            field = path.split(".")[0].split("[")[0] or "body"
            raise BadRequestError(
                f"The request body nests objects and arrays more than {MAX_DEPTH} levels deep (at '{path}'); "
                "no OpenAI request needs that.",
                param=field,
                code="too_deeply_nested",
            )
        if isinstance(node, dict):
            for k, v in node.items():
                if isinstance(v, dict | list):
                    stack.append((v, depth + 1, f"{path}.{k}" if path else str(k)))
        else:
            for i, v in enumerate(node):
                if isinstance(v, dict | list):
                    stack.append((v, depth + 1, f"{path}[{i}]"))


def completion_id(endpoint: Endpoint) -> str:
    return ("chatcmpl-" if endpoint == "chat" else "cmpl-") + os.urandom(12).hex()


def _now() -> int:
    import time

    return int(time.time())


def response_body(
    endpoint: Endpoint,
    id_: str,
    model: str,
    text: str,
    finish_reason: str,
    usage: Usage,
    created: int | None = None,
) -> dict[str, Any]:
    """A whole (non-streamed) chat.completion or text_completion object."""
    created = created or _now()
    if endpoint == "chat":
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text, "refusal": None},
            "logprobs": None,
            "finish_reason": finish_reason,
        }
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        obj = "text_completion"
    return {
        "id": id_,
        "object": obj,
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": usage.as_dict(),
        "system_fingerprint": None,
    }


def chunk_body(
    endpoint: Endpoint,
    id_: str,
    model: str,
    created: int,
    *,
    text: str | None = None,
    role: bool = False,
    finish_reason: str | None = None,
) -> dict[str, Any]:
    """One streamed chunk: a role announcement, a content delta, or the finish reason."""
    if endpoint == "chat":
        delta: dict[str, Any] = {}
        if role:
            delta["role"] = "assistant"
            delta["content"] = ""
        if text is not None:
            delta["content"] = text
        choice: dict[str, Any] = {
            "index": 0,
            "delta": delta,
            "logprobs": None,
            "finish_reason": finish_reason,
        }
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        obj = "text_completion"
    return {
        "id": id_,
        "object": obj,
        "created": created,
        "model": model,
        "choices": [choice],
        "system_fingerprint": None,
    }


def usage_chunk(endpoint: Endpoint, id_: str, model: str, created: int, usage: Usage) -> dict[str, Any]:
    """The final chunk `stream_options.include_usage` asks for: no choices, only usage."""
    obj = "chat.completion.chunk" if endpoint == "chat" else "text_completion"
    return {
        "id": id_,
        "object": obj,
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage.as_dict(),
    }


def prompt_text(body: dict[str, Any], endpoint: Endpoint) -> str:
    """The plain text of a request's prompt, for counting and estimating."""
    if endpoint == "completions":
        p = body.get("prompt") or ""
        return p if isinstance(p, str) else "\n".join(str(x) for x in p)
    parts: list[str] = []
    for m in body.get("messages", ()):
        c = m.get("content") if isinstance(m, dict) else None
        if isinstance(c, str):
            parts.append(c)
        elif isinstance(c, list):
            parts.extend(str(p.get("text", "")) for p in c if isinstance(p, dict))
    return "\n".join(parts)
