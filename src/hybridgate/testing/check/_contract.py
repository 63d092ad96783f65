"""The contract suite: OpenAI compatibility, field by field, on the wire and through the official client.

Every test records what it observed (`metrics.fields`: path -> JSON type; `metrics.behaviour`: status codes,
error params, stream event order) so `hybridgate drift` can compare a mock's report with a real backend's.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from hybridgate.testing.check._cases import Case, Metrics, chat_body, fail_on, ok_json
from hybridgate.testing.check._context import CheckFailed, Context, guard
from hybridgate.testing.check._schema import (
    CHAT_COMPLETION,
    ERROR,
    MODEL_LIST,
    TEXT_COMPLETION,
    check,
    observe,
    usage_problems,
)
from hybridgate.testing.check._sse import StreamChecker, iter_sse

NO_SUCH_MODEL = "hybridgate-check-no-such-model"


def _id_prefix(id_: Any) -> str:
    s = str(id_)
    return s.split("-", 1)[0] + "-" if "-" in s else ""


def _content_type(r: httpx.Response) -> str:
    return r.headers.get("content-type", "").split(";")[0].strip()


# --- plain JSON answers -------------------------------------------------------------------------------------
def models_schema(ctx: Context) -> Metrics:
    r = ctx.get("models")
    j = ok_json(r, "GET /v1/models")
    problems = check(j, MODEL_LIST, "model list")
    if isinstance(j, dict) and not j.get("data"):
        problems.append("model list: 'data' is empty")
    m = {"fields": observe(j), "behaviour": {"status": r.status_code, "content_type": _content_type(r)}}
    fail_on(problems, m)
    return m


def _completion_case(ctx: Context, path: str, body: dict[str, Any], shape: Any, what: str) -> Metrics:
    r = ctx.post(path, body)
    j = ok_json(r, f"POST /v1/{path}")
    problems = check(j, shape, what) + usage_problems(j, what, body["max_tokens"])
    if isinstance(j, dict) and isinstance(j.get("choices"), list) and len(j["choices"]) != 1:
        problems.append(f"{what}: {len(j['choices'])} choices; n=1 was requested")
    m = {
        "fields": observe(j),
        "behaviour": {
            "status": r.status_code,
            "content_type": _content_type(r),
            "id_prefix": _id_prefix(j.get("id")),
        },
    }
    fail_on(problems, m)
    return m


def chat_schema(ctx: Context) -> Metrics:
    body = {
        "model": ctx.model,
        "max_tokens": 16,
        "temperature": 0,
        "messages": [
            {"role": "system", "content": "You answer briefly."},
            {"role": "user", "content": "Name a primary color."},
        ],
    }
    return _completion_case(ctx, "chat/completions", body, CHAT_COMPLETION, "chat.completion")


def completion_schema(ctx: Context) -> Metrics:
    body = {"model": ctx.model, "prompt": "The sky is", "max_tokens": 16, "temperature": 0}
    return _completion_case(ctx, "completions", body, TEXT_COMPLETION, "text_completion")


def max_tokens_length(ctx: Context) -> Metrics:
    """A cut answer must say so: finish_reason 'length', and no more tokens than allowed."""
    r = ctx.post("chat/completions", chat_body(ctx, "Count from 1 to 50, separated by spaces.", 5))
    j = ok_json(r, "POST /v1/chat/completions")
    problems = check(j, CHAT_COMPLETION, "chat.completion") + usage_problems(j, "chat.completion", 5)
    finish = (j.get("choices") or [{}])[0].get("finish_reason") if isinstance(j, dict) else None
    if finish != "length":
        problems.append(f"finish_reason is {finish!r} for an answer cut at max_tokens=5, expected 'length'")
    m = {"fields": observe(j), "behaviour": {"status": r.status_code, "finish_reason": finish}}
    fail_on(problems, m)
    return m


# --- streams ------------------------------------------------------------------------------------------------
def _stream_case(ctx: Context, path: str, body: dict[str, Any], endpoint: str) -> Metrics:
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    t0 = time.perf_counter()
    with guard(ctx.root), ctx.http.stream("POST", ctx.url(path), json=body) as r:
        if r.status_code != 200:
            r.read()
            raise CheckFailed(f"POST /v1/{path} (stream) answered HTTP {r.status_code}: {r.text[:300]}")
        ct = _content_type(r)
        if ct != "text/event-stream":
            raise CheckFailed(f"a stream must be text/event-stream, got {ct!r}")
        checker = StreamChecker(endpoint, include_usage, t0)
        try:
            for data in iter_sse(r.iter_lines()):
                checker.feed(data)
        except (httpx.RemoteProtocolError, httpx.ReadError) as e:
            raise CheckFailed(
                f"the connection broke mid-stream after {checker.events or 'no event'}: {e}"
            ) from None
        checker.end()
    problems = usage_problems({"usage": checker.usage}, "usage chunk", body["max_tokens"])
    m = {
        "fields": checker.fields,
        "behaviour": {
            "status": 200,
            "content_type": ct,
            "events": checker.events,
            "id_prefix": _id_prefix(next(iter(checker.ids), "")),
            "usage_in_choice_chunks": checker.usage_in_choice_chunks,
        },
        "ttft_ms": None if checker.ttft_ms is None else round(checker.ttft_ms, 2),
        "chunks": len(checker.kinds),
    }
    fail_on(problems, m)
    return m


def chat_stream(ctx: Context) -> Metrics:
    body = chat_body(
        ctx,
        "Write one short sentence about the sea.",
        16,
        stream=True,
        stream_options={"include_usage": True},
    )
    return _stream_case(ctx, "chat/completions", body, "chat")


def chat_stream_without_usage(ctx: Context) -> Metrics:
    return _stream_case(ctx, "chat/completions", chat_body(ctx, "Say hello.", 8, stream=True), "chat")


def completion_stream(ctx: Context) -> Metrics:
    body = {
        "model": ctx.model,
        "prompt": "Once upon a time",
        "max_tokens": 16,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    return _stream_case(ctx, "completions", body, "completions")


# --- errors -------------------------------------------------------------------------------------------------
def _error_case(ctx: Context, r: httpx.Response, what: str, status: int, param: str | None = None) -> Metrics:
    j = ok_json(r, what, status)
    problems = check(j, ERROR, "error body")
    err: dict[str, Any] = j["error"] if isinstance(j, dict) and isinstance(j.get("error"), dict) else {}
    if param is not None and err.get("param") != param:
        problems.append(f"error.param is {err.get('param')!r}, expected {param!r} (the field to fix)")
    m = {
        "fields": observe(j),
        "behaviour": {
            "status": r.status_code,
            "type": err.get("type"),
            "param": err.get("param"),
            "code": err.get("code"),
        },
    }
    fail_on(problems, m)
    return m


def error_bad_value(ctx: Context) -> Metrics:
    r = ctx.post("chat/completions", chat_body(ctx, "Hi.", 4, temperature=5))
    return _error_case(ctx, r, "temperature=5", 400, "temperature")


def error_missing_field(ctx: Context) -> Metrics:
    r = ctx.post("chat/completions", {"model": ctx.model, "max_tokens": 4})
    return _error_case(ctx, r, "a chat request without messages", 400, "messages")


def error_invalid_json(ctx: Context) -> Metrics:
    with guard(ctx.root):
        r = ctx.http.post(
            ctx.url("chat/completions"), content=b'{"model": ', headers={"content-type": "application/json"}
        )
    return _error_case(ctx, r, "a body that is not JSON", 400)


def error_unknown_model(ctx: Context) -> Metrics:
    r = ctx.post("chat/completions", {**chat_body(ctx, "Hi.", 4), "model": NO_SUCH_MODEL})
    return _error_case(ctx, r, f"model {NO_SUCH_MODEL!r}", 404)


# --- the official client ------------------------------------------------------------------------------------
def client_models(ctx: Context) -> Metrics:
    with guard(ctx.root):
        ids = [m.id for m in ctx.openai.models.list()]
    if not ids or not all(isinstance(i, str) for i in ids):
        raise CheckFailed(f"openai client: models.list() gave {ids!r}")
    return {"behaviour": {"parsed": "SyncPage[Model]"}, "count": len(ids)}


def client_chat(ctx: Context) -> Metrics:
    with guard(ctx.root):
        r = ctx.openai.chat.completions.create(
            model=ctx.model, messages=[{"role": "user", "content": "Say hello."}], max_tokens=8, temperature=0
        )
    problems = []
    if r.object != "chat.completion" or not r.choices or not isinstance(r.choices[0].message.content, str):
        problems.append(f"openai client: unexpected ChatCompletion {r.model_dump_json()[:300]}")
    if r.usage is None or r.usage.total_tokens != r.usage.prompt_tokens + r.usage.completion_tokens:
        problems.append(f"openai client: usage missing or inconsistent: {r.usage}")
    m = {
        "behaviour": {
            "parsed": type(r).__name__,
            "finish_reason_set": bool(r.choices and r.choices[0].finish_reason),
        }
    }
    fail_on(problems, m)
    return m


def client_completion(ctx: Context) -> Metrics:
    with guard(ctx.root):
        r = ctx.openai.completions.create(model=ctx.model, prompt="Say hello.", max_tokens=8, temperature=0)
    if (
        r.object != "text_completion"
        or not r.choices
        or not isinstance(r.choices[0].text, str)
        or r.usage is None
    ):
        raise CheckFailed(f"openai client: unexpected Completion {r.model_dump_json()[:300]}")
    return {"behaviour": {"parsed": type(r).__name__}}


def client_stream(ctx: Context) -> Metrics:
    """The client must parse every chunk of both kinds of stream, the usage chunk included."""
    with guard(ctx.root):
        chat = list(
            ctx.openai.chat.completions.create(
                model=ctx.model,
                messages=[{"role": "user", "content": "Write one short sentence about the sea."}],
                max_tokens=16,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        text = list(
            ctx.openai.completions.create(
                model=ctx.model,
                prompt="Once upon a time",
                max_tokens=16,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    problems = []
    for what, chunks in (("chat", chat), ("completions", text)):
        if not chunks:
            problems.append(f"openai client: the {what} stream gave no chunk")
        elif chunks[-1].usage is None:
            problems.append(f"openai client: the {what} stream's last chunk carries no usage")
        if not any(c.choices and c.choices[0].finish_reason for c in chunks):
            problems.append(f"openai client: no chunk of the {what} stream has a finish_reason")
    m = {
        "behaviour": {
            "chat_chunk_type": type(chat[0]).__name__ if chat else None,
            "completion_chunk_type": type(text[0]).__name__ if text else None,
        },
        "chat_chunks": len(chat),
        "completion_chunks": len(text),
    }
    fail_on(problems, m)
    return m


def client_errors(ctx: Context) -> Metrics:
    """Bad requests must surface as the SDK's typed errors, with the offending field in `param`."""
    import openai

    seen: dict[str, Any] = {}
    problems: list[str] = []
    with guard(ctx.root):
        try:
            ctx.openai.chat.completions.create(
                model=ctx.model, messages=[{"role": "user", "content": "Hi."}], max_tokens=4, temperature=5
            )
            problems.append("openai client: temperature=5 was accepted")
        except openai.BadRequestError as e:
            seen["bad_value"] = {"error": type(e).__name__, "status": e.status_code, "param": e.param}
            if e.param != "temperature":
                problems.append(
                    f"openai client: BadRequestError.param is {e.param!r}, expected 'temperature'"
                )
        except openai.APIStatusError as e:
            problems.append(
                f"openai client: temperature=5 raised {type(e).__name__} (HTTP {e.status_code}), "
                "expected BadRequestError"
            )
        try:
            ctx.openai.chat.completions.create(
                model=NO_SUCH_MODEL, messages=[{"role": "user", "content": "Hi."}], max_tokens=4
            )
            problems.append(f"openai client: model {NO_SUCH_MODEL!r} was accepted")
        except openai.NotFoundError as e:
            seen["unknown_model"] = {"error": type(e).__name__, "status": e.status_code}
        except openai.APIStatusError as e:
            problems.append(
                f"openai client: an unknown model raised {type(e).__name__} (HTTP {e.status_code}), "
                "expected NotFoundError"
            )
    m = {"behaviour": seen}
    fail_on(problems, m)
    return m


CASES = [
    Case("contract.models", models_schema),
    Case("contract.chat", chat_schema),
    Case("contract.completion", completion_schema),
    Case("contract.max_tokens_length", max_tokens_length),
    Case("contract.chat_stream", chat_stream),
    Case("contract.chat_stream_without_usage", chat_stream_without_usage),
    Case("contract.completion_stream", completion_stream),
    Case("contract.error_bad_value", error_bad_value),
    Case("contract.error_missing_field", error_missing_field),
    Case("contract.error_invalid_json", error_invalid_json),
    Case("contract.error_unknown_model", error_unknown_model),
    Case("contract.client_models", client_models),
    Case("contract.client_chat", client_chat),
    Case("contract.client_completion", client_completion),
    Case("contract.client_stream", client_stream),
    Case("contract.client_errors", client_errors),
]
