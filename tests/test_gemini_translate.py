"""The gemini kind's translation rules, as pure functions: OpenAI request -> generateContent body, Gemini
answers and stream events -> OpenAI shapes, Google's errors -> the router's error classes."""

from __future__ import annotations

from typing import Any

import pytest

from hybridgate.backends._base import BackendHTTPError, BackendModelMissingError
from hybridgate.backends.gemini import http_error
from hybridgate.backends.gemini._backend import GeminiConfigError, _feed
from hybridgate.backends.gemini._translate import (
    StreamTranslator,
    TranslationError,
    finish_reason,
    request_body,
    response_body,
)


def test_chat_request_translation() -> None:
    body = {
        "model": "gemini-2.5-flash",
        "messages": [
            {"role": "system", "content": "Be terse."},
            {"role": "developer", "content": "Answer in English."},
            {"role": "user", "content": "Hello"},
            {"role": "user", "content": [{"type": "text", "text": "again"}]},
            {"role": "assistant", "content": "Hi."},
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}],
            },
        ],
        "temperature": 0.5,
        "top_p": 0.9,
        "max_tokens": 64,
        "stop": "\n\n",
        "n": 2,
        "seed": 3,
        "presence_penalty": 0.1,
        "response_format": {"type": "json_object"},
        "stream_options": {"include_usage": True},
        "user": "someone",
    }
    out = request_body("chat", body, None)
    assert out["systemInstruction"] == {"parts": [{"text": "Be terse."}, {"text": "Answer in English."}]}
    assert out["contents"] == [
        {"role": "user", "parts": [{"text": "Hello"}, {"text": "again"}]},  # consecutive turns merged
        {"role": "model", "parts": [{"text": "Hi."}]},
        {"role": "user", "parts": [{"inlineData": {"mimeType": "image/png", "data": "AAAA"}}]},
    ]
    assert out["generationConfig"] == {
        "temperature": 0.5,
        "topP": 0.9,
        "presencePenalty": 0.1,
        "maxOutputTokens": 64,
        "stopSequences": ["\n\n"],
        "candidateCount": 2,
        "seed": 3,
        "responseMimeType": "application/json",
    }


def test_output_limit_from_the_call_when_the_body_sets_none() -> None:
    out = request_body("completions", {"prompt": "Once upon"}, 16)
    assert out == {
        "contents": [{"role": "user", "parts": [{"text": "Once upon"}]}],
        "generationConfig": {"maxOutputTokens": 16},
    }
    # max_completion_tokens counts too; the larger of two limits wins (what a backend may honour).
    out = request_body(
        "chat",
        {"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 9, "max_tokens": 5},
        None,
    )
    assert out["generationConfig"]["maxOutputTokens"] == 9


@pytest.mark.parametrize(
    ("endpoint", "body", "param"),
    [
        ("chat", {"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, "tools"),
        ("chat", {"messages": [{"role": "user", "content": "x"}], "logprobs": True}, "logprobs"),
        ("chat", {"messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]}, "messages[0].role"),
        ("chat", {"messages": [{"role": "system", "content": "only a system message"}]}, "messages"),
        (
            "chat",
            {"messages": [{"role": "user", "content": [{"type": "file", "file": {}}]}]},
            "messages[0].content[0]",
        ),
        (
            "chat",
            {"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_schema"}},
            "response_format",
        ),
        ("completions", {"prompt": [1, 2, 3]}, "prompt"),
        ("completions", {"prompt": ["a", "b"]}, "prompt"),
        ("completions", {"prompt": "a", "echo": True}, "echo"),
        ("completions", {"prompt": "a", "best_of": 3}, "best_of"),
    ],
)
def test_untranslatable_requests_name_the_parameter(endpoint: Any, body: dict[str, Any], param: str) -> None:
    with pytest.raises(TranslationError) as e:
        request_body(endpoint, body, None)
    assert e.value.param == param


def test_finish_reasons() -> None:
    assert finish_reason("STOP") == "stop"
    assert finish_reason("MAX_TOKENS") == "length"
    for r in ("SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII"):
        assert finish_reason(r) == "content_filter"
    assert finish_reason(None) is None and finish_reason("FINISH_REASON_UNSPECIFIED") is None


def test_answer_with_thinking_tokens_billed_as_output() -> None:
    payload = {
        "candidates": [
            {
                "content": {"parts": [{"text": "plan", "thought": True}, {"text": "Paris"}], "role": "model"},
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": {
            "promptTokenCount": 10,
            "candidatesTokenCount": 1,
            "thoughtsTokenCount": 30,
            "totalTokenCount": 41,
        },
        "responseId": "abc",
    }
    body, usage = response_body("chat", payload, "gemini-2.5-flash")
    assert body["id"] == "chatcmpl-abc"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Paris", "refusal": None}
    assert (usage.prompt_tokens, usage.completion_tokens) == (10, 31)
    assert body["usage"]["completion_tokens_details"] == {"reasoning_tokens": 30}


def test_no_candidates_without_a_reason_is_an_error() -> None:
    with pytest.raises(ValueError):
        response_body("chat", {"usageMetadata": {}}, "m")


def _event(
    text: str | None, finish: str | None = None, usage: dict[str, Any] | None = None, index: int = 0
) -> dict[str, Any]:
    c: dict[str, Any] = {"index": index}
    if text is not None:
        c["content"] = {"parts": [{"text": text}], "role": "model"}
    if finish:
        c["finishReason"] = finish
    return {"candidates": [c], "usageMetadata": usage or {"promptTokenCount": 7, "totalTokenCount": 7}}


def test_stream_usage_is_the_final_events_never_a_sum() -> None:
    tr = StreamTranslator("chat", "m")
    out = tr.feed(_event("Hel")) + tr.feed(_event("lo"))
    assert not tr.complete
    out += tr.feed(
        _event(" world", "STOP", {"promptTokenCount": 7, "candidatesTokenCount": 3, "totalTokenCount": 10})
    )
    assert tr.complete
    assert [c["choices"][0]["delta"] for c in out] == [
        {"role": "assistant", "content": "Hel"},
        {"content": "lo"},
        {"content": " world"},
        {},
    ]
    assert out[-1]["choices"][0]["finish_reason"] == "stop"
    usage = tr.usage_chunk()
    assert (
        usage is not None
        and usage["usage"]["prompt_tokens"] == 7
        and usage["usage"]["completion_tokens"] == 3
    )


def test_stream_waits_for_every_candidate() -> None:
    tr = StreamTranslator("chat", "m", expected=2)
    tr.feed(_event("a", "STOP", index=0))
    assert not tr.complete
    tr.feed(_event("b", "MAX_TOKENS", index=1))
    assert tr.complete


def test_stream_feed_keeps_chunks_before_an_error_event() -> None:
    tr = StreamTranslator("chat", "m")
    lines = [
        b'data: {"candidates":[{"content":{"parts":[{"text":"par"}],"role":"model"},"index":0}]}\r',
        b"\r",
        b'data: {"error":{"code":500,"message":"An internal error has occurred.","status":"INTERNAL"}}\r',
    ]
    out, err = _feed(tr, lines)
    assert [c["choices"][0]["delta"].get("content") for c in out] == ["par"]
    assert err is not None and "500 INTERNAL: An internal error has occurred." in err.message


def test_google_errors_map_to_the_router_rules() -> None:
    def g(code: int, status: str, message: str, reason: str | None = None) -> dict[str, Any]:
        err: dict[str, Any] = {"code": code, "status": status, "message": message}
        if reason:
            err["details"] = [{"reason": reason}]
        return {"error": err}

    overloaded = http_error(503, g(503, "UNAVAILABLE", "The model is overloaded."), "")
    assert isinstance(overloaded, BackendHTTPError) and overloaded.retryable and overloaded.marks_unhealthy
    quota = http_error(429, g(429, "RESOURCE_EXHAUSTED", "quota"), "")
    assert quota.retryable
    client = http_error(400, g(400, "INVALID_ARGUMENT", "bad temperature"), "")
    assert not client.retryable and client.body["error"]["message"] == "Gemini: bad temperature"
    key = http_error(400, g(400, "INVALID_ARGUMENT", "API key not valid.", "API_KEY_INVALID"), "")
    assert isinstance(key, GeminiConfigError) and key.retryable
    denied = http_error(403, g(403, "PERMISSION_DENIED", "no"), "")
    assert isinstance(denied, GeminiConfigError)
    missing = http_error(404, g(404, "NOT_FOUND", "models/x is not found for API version v1"), "")
    assert isinstance(missing, BackendModelMissingError)
    html = http_error(502, None, "<html>Bad Gateway</html>")
    assert html.retryable and "Bad Gateway" in html.message
