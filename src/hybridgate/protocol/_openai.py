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
) -> tuple[dict[str, Any], ChatCompletionRequest | CompletionRequest]:
    """Parse and validate a request body; returns the raw dict (forwarded) and the validated model."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise BadRequestError(f"The request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise BadRequestError("The request body must be a JSON object.", code="invalid_json")
    # Counting brackets is C-fast; only a body with that many can nest that deep (strings included).
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH:
        _check_depth(data)
    model_cls = ChatCompletionRequest if endpoint == "chat" else CompletionRequest
    try:
        req = model_cls.model_validate(data)
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
    # What was validated is what is sent: a count written as 16.0 goes upstream as 16, which every server
    # reads (some slice with it, and a 500 there would count against that backend).
    for name in _COUNTS:
        v = data.get(name)
        if v.__class__ is float:
            data[name] = _whole(v)
    return data, req


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
