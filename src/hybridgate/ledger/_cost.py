"""The most one attempt can cost, known before it runs, so calls in flight never overrun a budget."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from hybridgate.config import BackendConfig
from hybridgate.ledger._pricing import price_usage
from hybridgate.protocol import Endpoint, Usage, prompt_text

# When a client sets no max_tokens, a budgeted call on a per-token price is capped at this many output
# tokens (written into the backend's request), because an unbounded answer has no worst case to reserve.
DEFAULT_MAX_TOKENS = 4096
# Per message, chat templates add role markers and separators; generous for every tokenizer we know.
_PER_MESSAGE = 8
_PER_PROMPT = 8
# The router measures a few milliseconds past a backend's own deadline; a per-hour reservation covers it.
_HOURLY_SLACK_S = 1.0


def prompt_token_bound(body: dict[str, Any], endpoint: Endpoint) -> int:
    """An upper bound on the prompt's tokens: one per UTF-8 byte plus template overhead.

    Tokenizers produce at most about one token per byte of text, so this never underestimates for text
    (images and audio parts are not bounded: a budgeted key sending those relies on the backend's count).
    """
    n = len(prompt_text(body, endpoint).encode())
    if endpoint == "chat":
        n += _PER_MESSAGE * len(body.get("messages") or ())
    else:
        p = body.get("prompt")
        n += _PER_MESSAGE * (len(p) if isinstance(p, list) else 1)
    for extra in ("tools", "functions", "response_format"):
        if body.get(extra):
            n += len(orjson.dumps(body[extra]))
    return n + _PER_PROMPT


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
    """The highest cost this request can reach on `backend`; may cap max_tokens in `body`.

    See DEFAULT_MAX_TOKENS: without a cap an answer's length, and so its cost, has no bound."""
    price = backend.price
    capped = None
    if max_tokens is None and price.output_per_mtok:
        max_tokens = capped = DEFAULT_MAX_TOKENS
        body["max_tokens"] = capped
    n = body.get("n")
    choices = n if isinstance(n, int) and n > 1 else 1
    out = (max_tokens or 0) * choices
    inp = prompt_token_bound(body, endpoint)
    seconds = backend.timeouts.total_s + _HOURLY_SLACK_S if price.per_hour else 0.0
    return WorstCase(price_usage(price, Usage(inp, out), seconds), inp, out, capped)


__all__ = ["DEFAULT_MAX_TOKENS", "WorstCase", "prompt_token_bound", "worst_case"]
