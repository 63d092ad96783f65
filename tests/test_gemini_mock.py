"""`hybridgate mock-gemini` as Google's own SDK sees it: the official google-genai client (pinned) against a
real mock-gemini process on loopback. This is what keeps the mock honest: whatever the SDK parses here is
what the gateway's gemini backend is tested against."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from google import genai
from google.genai import errors, types

from hybridgate.testing.procs import Proc, set_mock_behaviour, start_mock_gemini

KEY = "mock-gemini-key"


@pytest.fixture(scope="module")
def mock() -> Iterator[Proc]:
    p = start_mock_gemini(api_key=KEY, model=["gemini-2.5-flash", "gemini-2.5-pro"])
    yield p
    p.stop()


@pytest.fixture
def reset(mock: Proc) -> Iterator[None]:
    yield
    set_mock_behaviour(
        mock.url,
        api_key=KEY,
        gemini=True,
        fail_rate=0,
        fail_status=503,
        error_mid_stream=False,
        drop_mid_stream=False,
    )


@pytest.fixture(params=["v1", "v1beta"])
def client(request: pytest.FixtureRequest, mock: Proc, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for var in ("GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_GENAI_USE_ENTERPRISE", "GOOGLE_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    c = genai.Client(
        api_key=KEY, http_options=types.HttpOptions(base_url=mock.url, api_version=request.param)
    )
    yield c
    c.close()


def _raw(mock: Proc, path: str, body: Any, key: str | None = KEY) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["x-goog-api-key"] = key
    req = urllib.request.Request(mock.url + path, data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_generate_content_canary_and_usage(client: Any) -> None:
    r = client.models.generate_content(
        model="gemini-2.5-flash", contents="What is the capital of France? One word."
    )
    assert r.text == "Paris"
    assert r.candidates[0].finish_reason == types.FinishReason.STOP
    u = r.usage_metadata
    assert u.prompt_token_count > 0 and u.candidates_token_count == 1
    assert u.total_token_count == u.prompt_token_count + 1
    assert r.response_id and r.model_version == "gemini-2.5-flash"


def test_generation_config_is_honoured(client: Any) -> None:
    cfg = types.GenerateContentConfig(
        system_instruction="You are terse.",
        temperature=0.2,
        max_output_tokens=3,
        candidate_count=2,
        seed=7,
    )
    r = client.models.generate_content(
        model="models/gemini-2.5-flash", contents="Tell me about gateways", config=cfg
    )
    assert len(r.candidates) == 2
    for c in r.candidates:
        assert c.finish_reason == types.FinishReason.MAX_TOKENS
    assert r.usage_metadata.candidates_token_count == 6  # 3 per candidate
    # The same prompt gives the same answer: deterministic like the OpenAI mock.
    again = client.models.generate_content(
        model="gemini-2.5-flash", contents="Tell me about gateways", config=cfg
    )
    assert again.candidates[0].content.parts[0].text == r.candidates[0].content.parts[0].text


def test_stop_sequences_cut_the_answer(client: Any) -> None:
    full = client.models.generate_content(model="gemini-2.5-flash", contents="Describe routing").text
    word = full.split()[3]
    cut = client.models.generate_content(
        model="gemini-2.5-flash",
        contents="Describe routing",
        config=types.GenerateContentConfig(stop_sequences=[word]),
    ).text
    assert word not in cut and full.startswith(cut.rstrip())


def test_stream_usage_only_complete_on_the_last_chunk(client: Any) -> None:
    chunks = list(
        client.models.generate_content_stream(model="gemini-2.5-flash", contents="Describe routing")
    )
    assert len(chunks) > 3
    text = "".join(c.text or "" for c in chunks)
    whole = client.models.generate_content(model="gemini-2.5-flash", contents="Describe routing").text
    assert text == whole
    assert [c.candidates[0].finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP
    for c in chunks[:-1]:
        assert c.usage_metadata.candidates_token_count is None
    last = chunks[-1].usage_metadata
    assert last.candidates_token_count == len(chunks)  # one token per event
    assert last.prompt_token_count == chunks[0].usage_metadata.prompt_token_count


def test_async_client_streams(mock: Proc) -> None:
    async def run() -> list[str]:
        c = genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=mock.url))
        try:
            out = []
            async for chunk in await c.aio.models.generate_content_stream(
                model="gemini-2.5-flash", contents="What is the capital of France?"
            ):
                out.append(chunk.text or "")
            return out
        finally:
            await c.aio.aclose()
            c.close()

    assert "".join(asyncio.run(run())) == "Paris"


def test_models_listing_and_get(client: Any) -> None:
    names = [m.name for m in client.models.list(config={"page_size": 1})]
    assert names == ["models/gemini-2.5-flash", "models/gemini-2.5-pro"]  # paged one at a time
    m = client.models.get(model="gemini-2.5-pro")
    assert m.name == "models/gemini-2.5-pro" and "generateContent" in m.supported_actions


def test_unknown_model_is_google_404(client: Any) -> None:
    with pytest.raises(errors.ClientError) as e:
        client.models.generate_content(model="gemini-9-ultra", contents="hi")
    assert e.value.code == 404 and e.value.status == "NOT_FOUND"
    assert "models/gemini-9-ultra is not found" in e.value.message


def test_bad_and_missing_key(mock: Proc) -> None:
    c = genai.Client(api_key="wrong", http_options=types.HttpOptions(base_url=mock.url))
    try:
        with pytest.raises(errors.ClientError) as e:
            c.models.generate_content(model="gemini-2.5-flash", contents="hi")
    finally:
        c.close()
    assert e.value.code == 400 and e.value.status == "INVALID_ARGUMENT"
    assert e.value.details["error"]["details"][0]["reason"] == "API_KEY_INVALID"
    status, body = _raw(mock, "/v1/models/gemini-2.5-flash:generateContent", {"contents": []}, key=None)
    assert status == 403 and body["error"]["status"] == "PERMISSION_DENIED"


def test_overload_and_quota_errors(client: Any, mock: Proc, reset: None) -> None:
    set_mock_behaviour(mock.url, api_key=KEY, gemini=True, fail_rate=1, fail_status=503)
    with pytest.raises(errors.ServerError) as e:
        client.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert e.value.code == 503 and e.value.status == "UNAVAILABLE"
    assert e.value.message == "The model is overloaded. Please try again later."
    set_mock_behaviour(mock.url, api_key=KEY, gemini=True, fail_status=429)
    with pytest.raises(errors.ClientError) as e2:
        client.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert e2.value.code == 429 and e2.value.status == "RESOURCE_EXHAUSTED"


def test_error_event_mid_stream(client: Any, mock: Proc, reset: None) -> None:
    set_mock_behaviour(mock.url, api_key=KEY, gemini=True, error_mid_stream=True)
    got: list[str] = []
    with pytest.raises(errors.ServerError) as e:
        for chunk in client.models.generate_content_stream(
            model="gemini-2.5-flash", contents="Describe routing"
        ):
            got.append(chunk.text or "")
    assert got, "the chunks before the error arrive first"
    assert e.value.code == 500 and e.value.status == "INTERNAL"


def test_blocked_prompt_and_safety_stop(client: Any) -> None:
    r = client.models.generate_content(model="gemini-2.5-flash", contents="mock:block this")
    assert r.candidates is None and r.text is None
    assert r.prompt_feedback.block_reason == types.BlockedReason.SAFETY
    s = client.models.generate_content(model="gemini-2.5-flash", contents="mock:safety tell me more")
    c = s.candidates[0]
    assert c.finish_reason == types.FinishReason.SAFETY
    assert any(r.blocked for r in c.safety_ratings)


def test_request_mistakes_are_refused_as_google_does(mock: Proc) -> None:
    path = "/v1/models/gemini-2.5-flash:generateContent"
    ok = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    status, body = _raw(mock, path, {**ok, "generation_config": {"max_output_tokens": 5}})
    assert status == 400 and 'Unknown name "generation_config"' in body["error"]["message"]
    status, body = _raw(mock, path, {**ok, "generationConfig": {"max_tokens": 5}})
    assert status == 400 and 'Unknown name "max_tokens"' in body["error"]["message"]
    status, body = _raw(mock, path, {"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]})
    assert status == 400 and "valid role" in body["error"]["message"]
    status, body = _raw(mock, path, {"contents": [{"role": "user", "parts": []}]})
    assert status == 400 and "must not be empty" in body["error"]["message"]
    status, body = _raw(mock, path, {"contents": []})
    assert status == 400 and body["error"]["status"] == "INVALID_ARGUMENT"
