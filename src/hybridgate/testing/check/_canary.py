"""The canary: one question with one right answer, to tell a working model from a merely answering server."""

from __future__ import annotations

import time

from hybridgate.testing.check._cases import Case, Metrics, chat_body
from hybridgate.testing.check._context import CheckFailed, Context

PROMPT = "In one word, can you provide me the capital of France?"
EXPECTED = "paris"
# Small models like to add a sentence around the word; leave them room so a right answer is not cut off.
MAX_TOKENS = 64


def is_correct(answer: str) -> bool:
    return EXPECTED in answer.lower()


def capital_of_france(ctx: Context) -> Metrics:
    t0 = time.perf_counter()
    r = ctx.post("chat/completions", chat_body(ctx, PROMPT, MAX_TOKENS))
    ms = round((time.perf_counter() - t0) * 1000, 2)
    if r.status_code != 200:
        raise CheckFailed(
            f"the canary got HTTP {r.status_code}: {r.text[:300]}",
            {"outcome": "error", "status": r.status_code, "latency_ms": ms},
        )
    try:
        answer = r.json()["choices"][0]["message"]["content"] or ""
    except (ValueError, KeyError, IndexError, TypeError):
        raise CheckFailed(
            f"the canary's answer has no choices[0].message.content: {r.text[:300]}",
            {"outcome": "error", "status": r.status_code, "latency_ms": ms},
        ) from None
    m: Metrics = {"outcome": "correct", "answer": answer[:200], "model": ctx.model, "latency_ms": ms}
    if ctx.is_mock(ctx.model) or r.headers.get("x-hybridgate-backend") in ctx.mock_backends():
        m["mock"] = True
        m["note"] = (
            f"the model under test, '{ctx.model}', is a mock: its answer is canned, so this proves nothing "
            "about a real model (--model names another)"
        )
    if not is_correct(answer):
        m["outcome"] = "wrong_answer"
        raise CheckFailed(f"wrong answer: expected 'Paris' in {answer[:200]!r}", m)
    return m


CASES = [Case("canary.capital_of_france", capital_of_france)]
