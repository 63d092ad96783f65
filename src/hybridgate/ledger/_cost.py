"""The most one attempt can cost, known before it runs, so calls in flight never overrun a budget."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from hybridgate.config import BackendConfig
from hybridgate.ledger._pricing import price_usage
from hybridgate.protocol import Endpoint, Usage, whole_count

# When a client sets no max_tokens, a budgeted call on a per-token price is capped at this many output
# tokens (written into the backend's request), because an unbounded answer has no worst case to reserve.
DEFAULT_MAX_TOKENS = 4096
# Per message, chat templates add role markers and separators; generous for every tokenizer we know.
_PER_MESSAGE = 8
_PER_PROMPT = 8
# The router measures a few milliseconds past a backend's own deadline; a per-hour reservation covers it.
_HOURLY_SLACK_S = 1.0
# The largest output a reservation counts (past it a cost would not fit a float; no budget covers it).
_MAX_OUTPUT_TOKENS = 10**15
# What an adapter adds to a streamed body it sends: `,"stream_options":{"include_usage":true}` (40 bytes).
_STREAM_SLACK = 48


def prompt_token_bound(body: dict[str, Any], endpoint: Endpoint) -> int:
    """An upper bound on the input tokens a backend can bill for this body as sent: one per byte of it.

    Every byte that reaches the backend counts, whichever field holds it (message content, tool calls and
    their arguments, names, tools, response formats, unknown fields), plus template overhead per message.
    Tokenizers produce at most about one token per UTF-8 byte of text, so this never underestimates for
    text (image and audio parts are counted by their encoded size, which is not a bound on their tokens:
    a budgeted key sending those relies on the backend's count).
    """
    n = len(orjson.dumps(body)) + (_STREAM_SLACK if body.get("stream") else 0)
    if endpoint == "chat":
        n += _PER_MESSAGE * len(body.get("messages") or ())
    else:
        p = body.get("prompt")
        n += _PER_MESSAGE * (len(p) if isinstance(p, list) else 1)
    return n + _PER_PROMPT


def output_bound(body: dict[str, Any]) -> int | None:
    """The largest output limit the body sets (max_tokens, max_completion_tokens); None when it sets none.

    With both present a backend honours one of them: the larger is the bound."""
    a = whole_count(body.get("max_tokens"))
    b = whole_count(body.get("max_completion_tokens"))
    if a is None:
        return b
    return a if b is None else max(a, b)


def _choices(body: dict[str, Any], endpoint: Endpoint) -> int:
    """How many answers the output bound applies to: n, best_of, and each prompt of a batch."""
    k = whole_count(body.get("n")) or 1
    if endpoint == "completions":
        # best_of: generated (and billed), n of them returned; chat has none
        k = max(k, whole_count(body.get("best_of")) or 1)
        p = body.get("prompt")
        if isinstance(p, list) and p and not isinstance(p[0], int):
            k *= len(p)  # a batch of prompts (strings or token lists): one answer set per prompt
    return k


@dataclass(frozen=True, slots=True)
class WorstCase:
    cost_usd: float
    input_tokens: int
    output_tokens: int
    # The max_tokens the gateway had to set because the client sent none (None: the client's own).
    capped_at: int | None = None

    def describe(self) -> str:
        cap = f", max_tokens capped at {self.capped_at}" if self.capped_at else ""
        tokens = f"{self.input_tokens} prompt + {self.output_tokens} output tokens at most{cap}"
        return f"up to ${self.cost_usd:.6f} ({tokens})"


def worst_case(
    backend: BackendConfig, body: dict[str, Any], endpoint: Endpoint, max_tokens: int | None
) -> WorstCase:
    """The highest cost this request can reach on `backend`, for the body as it will be sent.

    `max_tokens`: the output bound the call applies (the client's, or the endpoint's default). When the
    body sets no output limit and the price depends on output, the bound is written into `body`, so the
    limit reserved is the limit the backend receives (a server's own default may be far larger: llama.cpp's
    generates until it stops). See DEFAULT_MAX_TOKENS: without any limit an answer's cost has no bound.
    """
    price = backend.price_for(str(body.get("model", "")))
    capped = None
    bound = output_bound(body)
    if bound is None and price.output_per_mtok:
        bound = capped = max_tokens if max_tokens is not None else DEFAULT_MAX_TOKENS
        body["max_tokens"] = capped
    elif bound is None:
        bound = max_tokens
    elif max_tokens is not None:
        bound = max(bound, max_tokens)
    # Capped where a float still holds it exactly enough: any such bound is refused by every budget anyway.
    out = min((bound or 0) * _choices(body, endpoint), _MAX_OUTPUT_TOKENS)
    inp = prompt_token_bound(body, endpoint)
    seconds = backend.timeouts.total_s + _HOURLY_SLACK_S if price.per_hour else 0.0
    return WorstCase(price_usage(price, Usage(inp, out), seconds), inp, out, capped)


__all__ = ["DEFAULT_MAX_TOKENS", "WorstCase", "output_bound", "prompt_token_bound", "worst_case"]
