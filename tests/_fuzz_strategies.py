"""Hypothesis strategies for the bodies a hostile client sends: raw bytes, not only valid JSON.

A body is built as a tree whose leaves may be JSON text written verbatim (`Raw`: 1e400, NaN, a thousand
open brackets) or bytes that are not UTF-8 (`Bad`), and whose objects may repeat a key (`Dup`); `encode`
writes it out. Then the framing may be broken too (empty, truncated, trailing bytes, a byte order mark).
A changed field gets a plausible value (often at an edge: what passes validation and reaches the budget
arithmetic and the backends) twice as often as a hostile one (another type, deep, huge, not JSON).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from hypothesis import strategies as st

# Every field the two inference routes know, and the ones OpenAI defines that the gateway forwards untouched.
CHAT_FIELDS = (
    "model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens", "n",
    "temperature", "top_p", "stop", "seed", "tools", "tool_choice", "functions", "function_call",
    "response_format", "presence_penalty", "frequency_penalty", "logprobs", "top_logprobs", "logit_bias",
    "user", "metadata", "parallel_tool_calls", "best_of", "prompt",
)  # fmt: skip
COMPLETION_FIELDS = (
    "model", "prompt", "stream", "stream_options", "max_tokens", "n", "temperature", "top_p", "stop",
    "seed", "best_of", "logprobs", "echo", "suffix", "logit_bias", "user", "messages",
    "max_completion_tokens", "presence_penalty", "frequency_penalty",
)  # fmt: skip
MESSAGE_FIELDS = ("role", "content", "name", "tool_calls", "tool_call_id", "function_call", "refusal")
# Where a hostile value can go inside a message or an option, as paths from the body's root.
NESTED_PATHS: tuple[tuple[str | int, ...], ...] = (
    ("stream_options", "include_usage"),
    ("messages", 0, "content", 0, "text"),
    ("messages", 0, "content", 0, "type"),
    ("messages", 0, "tool_calls", 0, "function", "arguments"),
    ("messages", 0, "tool_calls", 0, "function", "name"),
    ("messages", 0, "tool_calls", 0, "id"),
    ("messages", 1),
    ("tools", 0, "function", "parameters"),
    ("tools", 0, "type"),
    ("response_format", "json_schema", "schema"),
    ("stop", 0),
    ("prompt", 0),
    ("prompt", 0, 0),
    ("logit_bias", "50256"),
)
KEY_FIELDS = ("name", "budget_usd", "budget", "rpm", "models", "expires_at")

# Numbers as JSON text: past a double, past 64 bits, signed zero, subnormal, and the tokens JSON lacks.
NUMBER_TEXT = (
    "1e400", "-1e400", "1e-400", "-0", "-0.0", "0e0", "99999999999999999999999999", "1e308",
    "1.7976931348623157e308", "5e-324", "18446744073709551615", "18446744073709551616",
    "-9223372036854775808", "-9223372036854775809", "4294967296", "2147483648", "-1", "0", "1", "2.5",
    "64.0", "128", "129", "1E2", "1.0000000000000002", "NaN", "Infinity", "-Infinity", "+1", "01", ".5",
    "1.", "0x10",
)  # fmt: skip
STRING_TEXT = (
    '""', '" "', '"\\u0000"', '"\\ud800"', '"\\udc00\\ud800"', '"\\u00e9"', '"null"', '"true"', '"1e400"',
    '"NaN"', '"-1"', '"inf"', '"30d"', '"9999999999999999999d"', '"paid"', '"free"', '"user"', '"function"',
    '"\\"\\\\/\\b\\f\\n\\r\\t"',
)  # fmt: skip
# Bytes that are not UTF-8: a lone continuation byte, an overlong form, an encoded surrogate, too long.
NOT_UTF8 = (b"\xff", b"\xc3\x28", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80", b"\xfe\xff")
DEPTHS = (20, 62, 63, 64, 65, 66, 100, 254, 255, 256, 300, 1023, 1024, 1025, 5000)
# Mostly the two the gateway serves, so most bodies reach a backend; then names it must refuse.
MODELS = ("paid", "paid", "paid", "free", "free", "free", "nope", "", " paid", "PAID", "paid\u0000", "served")
# Values a number field may well take, at and just past its edges, as JSON text (1e308 stays 1e308).
WHOLE = (
    "0", "1", "2", "16", "64.0", "100", "128", "129", "4096", "2147483648", "1e308", "1.7976931348623157e308",
    "99999999999999999999999999", "18446744073709551615", "-0", "1e-400", "1E2", "2.5", "-1",
)  # fmt: skip
FRACTION = ("0", "-0", "0.5", "1", "1.0", "2", "2.0000001", "1e-400", "5e-324", "-2", "1e308", "-1e308")
ROLES = ("system", "user", "assistant", "tool", "developer", "function", "User", "", "bot")
# Whole numbers valid where no upper bound is set, and past a double once multiplied.
HUGE = ("1e300", "1e308", "1.7976931348623157e308", "99999999999999999999999999", "18446744073709551615")
# The whole-number fields (what the budget multiplies) and the rates.
COUNTS = ("max_tokens", "max_completion_tokens", "n", "best_of", "seed", "top_logprobs", "logprobs")
RATES = ("temperature", "top_p", "presence_penalty", "frequency_penalty")
# What a key expiry may be written as, inside the calendar and past it.
EXPIRES = (
    "30d", "1h", "0s", "1e20", "1e308", "inf", "-inf", "nan", "99999999999d", "1.5w", "9999-12-31",
    "9999-12-31T23:59:59Z", "10000-01-01", "2020-01-01", "1970-01-01T00:00:00+14:00", "", " ", "tomorrow",
)  # fmt: skip


class Raw(str):
    """JSON text written as it is (may be invalid JSON on purpose)."""


class Bad(bytes):
    """A string whose bytes are written as they are between quotes (may be invalid UTF-8 on purpose)."""


class Dup(list[Any]):
    """One object key written once per value, in order (JSON parsers keep the last)."""


def encode(node: Any) -> bytes:
    """Write a tree of dicts, lists, scalars, Raw, Bad and Dup as the bytes a client would send."""
    if isinstance(node, Raw):
        return node.encode()
    if isinstance(node, Bad):
        return b'"' + bytes(node) + b'"'
    if isinstance(node, dict):
        parts: list[bytes] = []
        for k, v in node.items():
            key = json.dumps(k).encode() + b":"
            parts.extend(key + encode(x) for x in (v if isinstance(v, Dup) else [v]))
        return b"{" + b",".join(parts) + b"}"
    if isinstance(node, list):
        return b"[" + b",".join(encode(x) for x in node) + b"]"
    return json.dumps(node).encode()


def _nest(depth: int, opener: str) -> Raw:
    if opener == "[":
        return Raw("[" * depth + "1" + "]" * depth)
    return Raw('{"a":' * depth + "1" + "}" * depth)


def _repeat(unit: str, size: int) -> Raw:
    # Sized by the bytes it takes in the body; non-ASCII is sent as UTF-8, not escaped.
    text = json.dumps(unit, ensure_ascii=False)[1:-1]
    return Raw('"' + text * max(1, size // len(text.encode())) + '"')


def huge_strings(limit: int) -> st.SearchStrategy[Raw]:
    """Strings of a few KB up to just past the body limit, of units that take 1 to 6 bytes in the body."""
    units = st.sampled_from(["a", "word ", "\u00e9", "\U0001f600", "\u0000", '"', "\\", "\u2028"])
    sizes = st.sampled_from([4_000, 20_000, limit // 2, limit - 4_096, limit + 1])
    return st.builds(_repeat, units, sizes)


def scalars() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=12),
        st.sampled_from(NUMBER_TEXT).map(Raw),
        st.sampled_from(STRING_TEXT).map(Raw),
        st.sampled_from(NOT_UTF8).map(Bad),
    )


def hostile_values(limit: int) -> st.SearchStrategy[Any]:
    """Any JSON type, and what is not JSON: for a field that wants something else entirely."""
    small = st.recursive(
        scalars(),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
        max_leaves=6,
    )
    deep = st.builds(_nest, st.sampled_from(DEPTHS), st.sampled_from(["[", "{"]))
    # Weighted by repetition: mostly small wrong values, sometimes deep, sometimes huge.
    return st.one_of(small, small, small, small, deep, huge_strings(limit), st.just([]), st.just({}))


def _wholes() -> st.SearchStrategy[Any]:
    return st.one_of(st.sampled_from(WHOLE).map(Raw), st.integers(min_value=0, max_value=300))


def _fractions() -> st.SearchStrategy[Any]:
    return st.one_of(st.sampled_from(FRACTION).map(Raw), st.floats(min_value=-3, max_value=3))


def _schema() -> st.SearchStrategy[Any]:
    leaf = st.fixed_dictionaries({"type": st.sampled_from(["string", "number", "object", "array"])})
    return st.recursive(
        leaf,
        lambda inner: st.fixed_dictionaries(
            {"type": st.just("object"), "properties": st.dictionaries(st.text(max_size=4), inner, max_size=2)}
        ),
        max_leaves=4,
    )


def _tool_calls() -> st.SearchStrategy[Any]:
    call = st.fixed_dictionaries(
        {
            "id": st.text(max_size=8),
            "type": st.just("function"),
            "function": st.fixed_dictionaries(
                {"name": st.text(max_size=8), "arguments": st.text(max_size=40)}
            ),
        }
    )
    return st.lists(call, max_size=3)


def _content() -> st.SearchStrategy[Any]:
    part = st.one_of(
        st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=30)}),
        st.fixed_dictionaries(
            {"type": st.just("image_url"), "image_url": st.fixed_dictionaries({"url": st.just("data:,x")})}
        ),
        st.fixed_dictionaries({"text": st.integers()}),
    )
    return st.one_of(st.text(max_size=60), st.lists(part, max_size=3), st.none())


def _message() -> st.SearchStrategy[Any]:
    return st.fixed_dictionaries(
        {"role": st.sampled_from(ROLES), "content": _content()},
        optional={
            "name": st.text(max_size=10),
            "tool_calls": _tool_calls(),
            "tool_call_id": st.text(max_size=8),
        },
    )


def _prompt() -> st.SearchStrategy[Any]:
    tokens = st.lists(st.integers(min_value=-1, max_value=2**32), max_size=8)
    return st.one_of(
        st.text(max_size=60),
        st.lists(st.text(max_size=10), max_size=120),  # a batch: one answer set per prompt
        tokens,
        st.lists(tokens, max_size=120),
        st.none(),
    )


def plausible_values() -> dict[str, st.SearchStrategy[Any]]:
    """Per field name (top-level, message or nested), values near what it takes."""
    tool = st.fixed_dictionaries(
        {
            "type": st.just("function"),
            "function": st.fixed_dictionaries(
                {"name": st.text(max_size=8)}, optional={"parameters": _schema()}
            ),
        }
    )
    wholes, fractions = _wholes(), _fractions()
    return {
        "model": st.sampled_from(MODELS),
        "messages": st.lists(_message(), max_size=4),
        "prompt": _prompt(),
        "stream": st.one_of(st.booleans(), st.none()),
        "stream_options": st.one_of(
            st.none(),
            st.fixed_dictionaries({}, optional={"include_usage": st.one_of(st.booleans(), st.none())}),
        ),
        "include_usage": st.one_of(st.booleans(), st.none()),
        **{
            f: wholes for f in ("max_tokens", "max_completion_tokens", "n", "best_of", "seed", "top_logprobs")
        },
        **{f: fractions for f in ("temperature", "top_p", "presence_penalty", "frequency_penalty")},
        "logprobs": st.one_of(st.booleans(), wholes),
        "stop": st.one_of(st.text(max_size=5), st.lists(st.text(max_size=5), max_size=5), st.none()),
        "tools": st.lists(tool, max_size=3),
        "tool_choice": st.sampled_from(
            ["auto", "none", "required", {"type": "function", "function": {"name": "f"}}]
        ),
        "response_format": st.one_of(
            st.just({"type": "json_object"}),
            st.builds(
                lambda s: {"type": "json_schema", "json_schema": {"name": "x", "schema": s}}, _schema()
            ),
        ),
        "schema": _schema(),
        "parameters": _schema(),
        "logit_bias": st.dictionaries(st.text(max_size=6), st.integers(-100, 100), max_size=3),
        "role": st.sampled_from(ROLES),
        "content": _content(),
        "tool_calls": _tool_calls(),
        "name": st.text(max_size=20),
        "arguments": st.text(max_size=40),
        "text": st.text(max_size=40),
        "echo": st.booleans(),
        "user": st.text(max_size=10),
    }


def put(body: Any, path: tuple[str | int, ...], value: Any) -> Any:
    """`body` with `value` at `path`, building (or replacing) whatever containers the path needs."""
    head, rest = path[0], path[1:]
    if isinstance(head, int):
        items = list(body) if isinstance(body, list) else []
        while len(items) <= head:
            items.append({} if rest and isinstance(rest[0], str) else [])
        items[head] = put(items[head], rest, value) if rest else value
        return items
    fields = dict(body) if isinstance(body, dict) else {}
    fields[head] = put(fields.get(head), rest, value) if rest else value
    return fields


def ordinary(endpoint: str, model: str, stream: Any) -> dict[str, Any]:
    """An ordinary request for `endpoint`; `stream` None leaves the field out."""
    body: dict[str, Any] = {"model": model}
    if endpoint == "chat":
        body["messages"] = [{"role": "user", "content": "In one word, what is the capital of France?"}]
    else:
        body["prompt"] = "The capital of France is"
    if stream is not None:
        body["stream"] = stream
    return body


# One value of each JSON type, and the numbers a count trips on, for a field that wants another.
WRONG_TYPES: tuple[Any, ...] = (
    None, True, False, 0, -1, 2.5, 16.0, Raw("1e308"), Raw("-0"), "3", "", [], ["x"], [1], {}, {"a": 1},
)  # fmt: skip


def every_wrong_type(endpoint: str) -> Iterator[tuple[tuple[str | int, ...], Any]]:
    """Every field the route knows (and, for chat, every field of a message) with every WRONG_TYPES value."""
    fields = CHAT_FIELDS if endpoint == "chat" else COMPLETION_FIELDS
    paths: list[tuple[str | int, ...]] = [(f,) for f in fields]
    if endpoint == "chat":
        paths += [("messages", 0, f) for f in MESSAGE_FIELDS]
    for path in paths:
        for value in WRONG_TYPES:
            yield path, value


def _field(path: tuple[str | int, ...]) -> str:
    """The name whose plausible values fit `path`: its last named step."""
    return next((p for p in reversed(path) if isinstance(p, str)), "")


@st.composite
def request_trees(draw: st.DrawFn, endpoint: str, limit: int) -> Any:
    """A request for `endpoint` (chat or completions) with up to four fields changed: to a plausible value
    (often at an edge) twice as often as to a hostile one, repeated, or removed."""
    model = draw(st.sampled_from(MODELS))
    stream = draw(st.sampled_from([None, True, False, True]))
    body = ordinary(endpoint, model, stream)
    if stream and draw(st.booleans()):
        body["stream_options"] = {"include_usage": True}
    top = CHAT_FIELDS if endpoint == "chat" else COMPLETION_FIELDS
    targets = st.one_of(
        st.sampled_from(top).map(lambda f: (f,)),
        st.sampled_from(MESSAGE_FIELDS).map(lambda f: ("messages", 0, f)),
        st.sampled_from(NESTED_PATHS),
    )
    hostile = hostile_values(limit)
    plausible = plausible_values()
    for _ in range(draw(st.sampled_from([0, 1, 1, 2, 2, 3, 4]))):
        path = draw(targets)
        near = plausible.get(_field(path), hostile)
        values = st.one_of(near, near, hostile)
        how = draw(st.sampled_from(["set", "set", "set", "duplicate", "delete"]))
        if how == "delete" and len(path) == 1:
            body.pop(str(path[0]), None)
        elif how == "duplicate" and len(path) == 1:
            body[str(path[0])] = Dup([draw(values), body.get(str(path[0]), draw(values))])
        else:
            body = put(body, path, draw(values))
    return body


@st.composite
def number_trees(draw: st.DrawFn, endpoint: str) -> Any:
    """A request that is ordinary but for its numbers, set to edges at once: what the budget arithmetic
    multiplies (output limits times choices times prompts) and what is forwarded as it was written."""
    body = ordinary(endpoint, draw(st.sampled_from(["paid", "paid", "free"])), draw(st.booleans()))
    counts = st.one_of(_wholes(), st.sampled_from(HUGE).map(Raw))
    for f in (*COUNTS, *RATES):
        if draw(st.integers(min_value=0, max_value=3)) == 0:
            body[f] = draw(counts if f in COUNTS else _fractions())
    if endpoint == "completions" and draw(st.booleans()):
        body["prompt"] = draw(st.lists(st.sampled_from(["a", "b c", ""]), min_size=2, max_size=50))
    return body


@st.composite
def framed(draw: st.DrawFn, trees: st.SearchStrategy[Any]) -> bytes:
    """A tree encoded, and most often sent as it is; otherwise its framing is broken on purpose."""
    raw = encode(draw(trees))
    how = draw(
        st.sampled_from(["as is"] * 30 + ["empty", "cut", "trailing", "bom", "not an object", "bytes"])
    )
    if how == "empty":
        return b""
    if how == "cut":
        return raw[: draw(st.integers(min_value=0, max_value=max(0, len(raw) - 1)))]
    if how == "trailing":
        return raw + draw(st.sampled_from([b"x", b"\x00", b"{}", b" \n", b",", b"\xff"]))
    if how == "bom":
        return b"\xef\xbb\xbf" + raw
    if how == "not an object":
        return draw(st.sampled_from([b"[" + raw + b"]", b"null", b"1e400", b'"' + raw[:20] + b'"', b"NaN"]))
    if how == "bytes":
        at = draw(st.integers(min_value=0, max_value=len(raw)))
        return raw[:at] + draw(st.sampled_from(NOT_UTF8)) + raw[at:]
    return raw


def inference_bodies(endpoint: str, limit: int) -> st.SearchStrategy[bytes]:
    """Raw hostile bodies for /v1/chat/completions ("chat") or /v1/completions ("completions")."""
    trees = request_trees(endpoint, limit)
    # Two in three: fields changed and the framing maybe broken; one in three: only the numbers, at edges.
    return st.one_of(framed(trees), framed(trees), number_trees(endpoint).map(encode))


def key_values() -> dict[str, st.SearchStrategy[Any]]:
    """Per POST /admin/keys field, values near what it takes, at and past its edges."""
    amounts = st.one_of(
        _fractions(), _wholes(), st.sampled_from(["1e9", "1000000000.0000001", "1e10"]).map(Raw)
    )
    expires = st.one_of(
        st.sampled_from(EXPIRES),
        st.sampled_from(WHOLE).map(Raw),
        st.sampled_from(["253402300799", "253402300800", "4102444800", "-1"]).map(Raw),
    )
    return {
        "name": st.text(min_size=1, max_size=20).map(lambda t: f"fuzzed {t}"),
        "budget_usd": amounts,
        "budget": amounts,
        "rpm": _wholes(),
        "models": st.one_of(st.lists(st.sampled_from(MODELS), max_size=3), st.none()),
        "expires_at": expires,
    }


@st.composite
def key_trees(draw: st.DrawFn, limit: int) -> Any:
    """A POST /admin/keys body (a fresh name, a budget) with up to three fields changed: to a plausible
    value twice as often as to a hostile one, or repeated."""
    body: dict[str, Any] = {"name": f"fuzzed-{draw(st.integers(0, 10**9))}", "budget_usd": 1.0}
    hostile = hostile_values(limit)
    plausible = key_values()
    fields = st.sampled_from((*KEY_FIELDS, "unknown", "key", "id", "spent"))
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        field = draw(fields)
        near = plausible.get(field, hostile)
        values = st.one_of(near, near, hostile)
        if draw(st.integers(min_value=0, max_value=4)) == 0:
            body[field] = Dup([draw(values), draw(values)])
        else:
            body[field] = draw(values)
    return body


def key_bodies(limit: int) -> st.SearchStrategy[bytes]:
    """Raw hostile bodies for POST /admin/keys."""
    return framed(key_trees(limit))


__all__ = [
    "WRONG_TYPES",
    "Bad",
    "Dup",
    "Raw",
    "encode",
    "every_wrong_type",
    "inference_bodies",
    "key_bodies",
    "ordinary",
    "put",
]
