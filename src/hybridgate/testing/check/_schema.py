"""OpenAI response shapes, checked field by field, and the observed field map the drift check compares.

Paths are dotted; `[]` walks every item of an array (`choices[].message.content`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

_MISSING = object()


def json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    if isinstance(v, dict):
        return "object"
    return type(v).__name__


def observe(obj: Any, prefix: str = "", into: dict[str, str] | None = None) -> dict[str, str]:
    """Flatten a JSON value to {path: type}; a path seen with several types joins them (`null|string`)."""
    out: dict[str, str] = {} if into is None else into

    def add(path: str, t: str) -> None:
        old = out.get(path)
        if old is None:
            out[path] = t
        elif t not in old.split("|"):
            out[path] = "|".join(sorted({*old.split("|"), t}))

    def walk(v: Any, path: str) -> None:
        if path:
            add(path, json_type(v))
        if isinstance(v, dict):
            for k, x in v.items():
                walk(x, f"{path}.{k}" if path else str(k))
        elif isinstance(v, list):
            for x in v:
                walk(x, f"{path}[]")

    walk(obj, prefix)
    return out


def _values(obj: Any, parts: Sequence[str]) -> Iterator[Any]:
    """Every value at the path; _MISSING where a step is absent."""
    if not parts:
        yield obj
        return
    head, rest = parts[0], parts[1:]
    many = head.endswith("[]")
    key = head[:-2] if many else head
    v = obj.get(key, _MISSING) if isinstance(obj, dict) else _MISSING
    if v is _MISSING:
        yield _MISSING
    elif many:
        if isinstance(v, list):
            for item in v:
                yield from _values(item, rest)
        else:
            yield _MISSING
    else:
        yield from _values(v, rest)


@dataclass(frozen=True)
class F:
    """One field of a shape: its JSON type(s), the values it may take, and whether it must exist."""

    path: str
    types: str
    values: tuple[Any, ...] = ()
    optional: bool = False


def check(obj: Any, shape: Sequence[F], what: str) -> list[str]:
    """Every way `obj` departs from `shape`, as messages naming the field."""
    problems: list[str] = []
    if not isinstance(obj, dict):
        return [f"{what}: expected a JSON object, got {json_type(obj)}"]
    for f in shape:
        allowed = f.types.split("|")
        for v in _values(obj, f.path.split(".")):
            if v is _MISSING:
                if not f.optional:
                    problems.append(f"{what}: '{f.path}' is missing")
                break
            t = json_type(v)
            if t not in allowed and not (t == "integer" and "number" in allowed):
                problems.append(f"{what}: '{f.path}' is {t} ({v!r:.60}), expected {f.types}")
                break
            if f.values and v is not None and v not in f.values:
                problems.append(
                    f"{what}: '{f.path}' is {v!r}, expected one of {', '.join(map(str, f.values))}"
                )
                break
    return problems


FINISH_REASONS = ("stop", "length", "tool_calls", "content_filter", "function_call")

USAGE = (
    F("usage", "object"),
    F("usage.prompt_tokens", "integer"),
    F("usage.completion_tokens", "integer"),
    F("usage.total_tokens", "integer"),
)

MODEL_LIST = (
    F("object", "string", ("list",)),
    F("data", "array"),
    F("data[].id", "string"),
    F("data[].object", "string", ("model",)),
    F("data[].created", "integer"),
    F("data[].owned_by", "string"),
)

CHAT_COMPLETION = (
    F("id", "string"),
    F("object", "string", ("chat.completion",)),
    F("created", "integer"),
    F("model", "string"),
    F("choices", "array"),
    F("choices[].index", "integer"),
    F("choices[].message", "object"),
    F("choices[].message.role", "string", ("assistant",)),
    F("choices[].message.content", "string|null"),
    F("choices[].finish_reason", "string", FINISH_REASONS),
    *USAGE,
)

TEXT_COMPLETION = (
    F("id", "string"),
    F("object", "string", ("text_completion",)),
    F("created", "integer"),
    F("model", "string"),
    F("choices", "array"),
    F("choices[].index", "integer"),
    F("choices[].text", "string"),
    F("choices[].finish_reason", "string", ("stop", "length", "content_filter")),
    *USAGE,
)

CHAT_CHUNK = (
    F("id", "string"),
    F("object", "string", ("chat.completion.chunk",)),
    F("created", "integer"),
    F("model", "string"),
    F("choices", "array"),
    F("choices[].index", "integer"),
    F("choices[].delta", "object"),
    F("choices[].delta.role", "string", ("assistant",), optional=True),
    F("choices[].delta.content", "string|null", optional=True),
    F("choices[].finish_reason", "string|null", FINISH_REASONS),
    F("usage", "object|null", optional=True),
)

TEXT_CHUNK = (
    F("id", "string"),
    F("object", "string", ("text_completion",)),
    F("created", "integer"),
    F("model", "string"),
    F("choices", "array"),
    F("choices[].index", "integer"),
    F("choices[].text", "string"),
    F("choices[].finish_reason", "string|null", ("stop", "length", "content_filter")),
    F("usage", "object|null", optional=True),
)

ERROR = (
    F("error", "object"),
    F("error.message", "string"),
    F("error.type", "string"),
    F("error.param", "string|null"),
    F("error.code", "string|null"),
)


def usage_problems(body: dict[str, Any], what: str, max_completion: int | None = None) -> list[str]:
    """Usage must add up, and must not report more generated tokens than max_tokens allowed."""
    u = body.get("usage")
    if not isinstance(u, dict):
        return []
    p, c, t = u.get("prompt_tokens"), u.get("completion_tokens"), u.get("total_tokens")
    out: list[str] = []
    if all(isinstance(x, int) for x in (p, c, t)):
        if p < 0 or c < 0:  # type: ignore[operator]
            out.append(f"{what}: usage counts are negative: {u}")
        if p + c != t:  # type: ignore[operator]
            out.append(f"{what}: usage.total_tokens {t} != prompt_tokens {p} + completion_tokens {c}")
        if max_completion is not None and c > max_completion:  # type: ignore[operator]
            out.append(f"{what}: usage.completion_tokens {c} exceeds max_tokens {max_completion}")
    return out
