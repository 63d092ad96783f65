"""The hand check of common request bodies (`protocol._openai._accept`) against the pydantic models.

The hot path validates a plainly valid body by hand and leaves everything else to pydantic, which words
the errors. These tests pin both halves: whatever the hand check lets through, pydantic accepts with the
same values; and the common body does not reach pydantic at all.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hybridgate.protocol import BadRequestError, Operation, parse_request
from hybridgate.protocol import _openai as openai_protocol
from hybridgate.protocol._openai import Accepted, ChatCompletionRequest, CompletionRequest, _accept

# Values at and around every edge the models draw, of every JSON type.
_ANY = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from([0, 1, 2, 3, -1, -2, 4, 16, 20, 21, 128, 129, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1]),
    st.sampled_from([0.0, 0.5, 1.0, 2.0, 2.5, -2.0, -2.5, 16.0, 1e300]),
    st.sampled_from(["", "x", "user", "system", "tool", "nobody", "16"]),
    st.lists(st.sampled_from(["a", "b", 1, None]), max_size=6),
    st.fixed_dictionaries({}, optional={"include_usage": st.one_of(st.booleans(), st.none(), st.just(1))}),
)
_MESSAGE = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "role": st.one_of(
                st.sampled_from(["user", "system", "assistant", "tool", "developer", "function"]), _ANY
            ),
            "content": st.one_of(
                st.text(max_size=5), st.lists(st.one_of(st.just({"type": "text"}), _ANY), max_size=3), _ANY
            ),
            "name": _ANY,
        },
    ),
    _ANY,
)
_FIELDS = {
    "model": st.one_of(st.just("m"), _ANY),
    "stream": _ANY,
    "stream_options": _ANY,
    "max_tokens": _ANY,
    "max_completion_tokens": _ANY,
    "temperature": _ANY,
    "top_p": _ANY,
    "n": _ANY,
    "stop": _ANY,
    "seed": _ANY,
    "presence_penalty": _ANY,
    "frequency_penalty": _ANY,
    "best_of": _ANY,
    "prompt": st.one_of(st.text(max_size=5), _ANY),
    "messages": st.one_of(st.lists(_MESSAGE, max_size=3), _ANY),
    "user": _ANY,
}
_DROP = object()
# A valid body with up to three fields changed (or dropped): most stay valid, many do not.
_CHANGES = st.lists(st.sampled_from(sorted(_FIELDS)), max_size=3, unique=True).flatmap(
    lambda keys: st.fixed_dictionaries({k: st.one_of(_FIELDS[k], st.just(_DROP)) for k in keys})
)


def _body(changes: dict[str, Any], chat: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "m", "stream": True}
    if chat:
        body["messages"] = [{"role": "user", "content": "hi"}]
    else:
        body["prompt"] = "hi"
    for k, v in changes.items():
        skip = ("prompt", "best_of") if chat else ("messages", "max_completion_tokens")
        if k in skip:
            continue
        if v is _DROP:
            body.pop(k, None)
        else:
            body[k] = v
    return body


def _same(accepted: Accepted, model: ChatCompletionRequest | CompletionRequest) -> None:
    assert accepted.model == model.model
    assert accepted.stream is model.stream
    assert accepted.limit() == model.limit()
    if model.stream_options is None:
        assert accepted.stream_options is None
    else:
        assert accepted.stream_options is not None
        assert accepted.stream_options.include_usage is model.stream_options.include_usage


seen = {"accepted": 0, "refused": 0}


@settings(max_examples=3000, deadline=None)
@given(changes=_CHANGES, chat=st.booleans())
def test_what_the_hand_check_lets_through_pydantic_accepts_with_the_same_values(
    changes: dict[str, Any], chat: bool
) -> None:
    body = _body(changes, chat)
    model_cls = ChatCompletionRequest if chat else CompletionRequest
    accepted = _accept(dict(body), chat)
    if accepted is None:
        seen["refused"] += 1
        return
    seen["accepted"] += 1
    _same(accepted, model_cls.model_validate(body))


def test_the_generated_bodies_reached_both_halves() -> None:
    # Runs after the property test (file order): it must have let some bodies through and refused others.
    assert seen["accepted"] > 50, seen
    assert seen["refused"] > 50, seen


@pytest.mark.parametrize(
    ("body", "chat"),
    [
        (
            {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 64},
            True,
        ),
        (
            {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 1, "stop": ["a"]},
            True,
        ),
        ({"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]}, True),
        (
            {
                "model": "m",
                "stream": True,
                "stream_options": {"include_usage": True},
                "messages": [{"role": "user"}],
            },
            True,
        ),
        ({"model": "m", "prompt": "hi", "max_tokens": 0, "best_of": 2}, False),
    ],
)
def test_common_bodies_do_not_reach_pydantic(
    monkeypatch: pytest.MonkeyPatch, body: dict[str, Any], chat: bool
) -> None:
    calls = []
    real = openai_protocol._validate
    monkeypatch.setattr(openai_protocol, "_validate", lambda *a: calls.append(a) or real(*a))
    data, req = parse_request(orjson.dumps(body), Operation.CHAT if chat else Operation.COMPLETIONS)
    assert calls == []
    assert isinstance(req, Accepted)
    _same(req, (ChatCompletionRequest if chat else CompletionRequest).model_validate(body))
    assert data == body


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0},
            "Invalid value for 'max_tokens'",
        ),
        ({"model": "m", "messages": []}, "Invalid value for 'messages'"),
        ({"messages": [{"role": "user"}]}, "Missing required parameter: 'model'."),
        ({"model": "m", "messages": [{"role": "robot"}]}, "Invalid value for 'messages[0].role'"),
        ({"model": "m", "messages": [{"role": "user"}], "temperature": 3}, "Invalid value for 'temperature'"),
        ({"model": "m", "messages": [{"role": "user"}], "stream": "yes"}, "Invalid value for 'stream'"),
    ],
)
def test_a_body_the_hand_check_refuses_gets_pydantics_error(body: dict[str, Any], message: str) -> None:
    with pytest.raises(BadRequestError) as e:
        parse_request(orjson.dumps(body), Operation.CHAT)
    assert e.value.message.startswith(message)


def test_a_whole_float_count_still_goes_upstream_as_an_integer() -> None:
    body = {"model": "m", "messages": [{"role": "user"}], "max_tokens": 16.0, "n": 2.0}
    data, req = parse_request(orjson.dumps(body), Operation.CHAT)
    assert not isinstance(req, Accepted)  # a float count is pydantic's
    assert data["max_tokens"] == 16 and type(data["max_tokens"]) is int
    assert req.limit() == 16
