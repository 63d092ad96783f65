"""What a check test is, and the helpers every suite uses to judge an HTTP answer."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from hybridgate.testing.check._context import CheckFailed, Context

Metrics = dict[str, Any]


@dataclass(frozen=True)
class Case:
    """One named test: a function of the run's Context returning metrics or raising CheckFailed/Skipped."""

    name: str
    fn: Callable[[Context], Metrics | None]


def ok_json(r: httpx.Response, what: str, status: int = 200) -> Any:
    """The decoded body, when the status is the expected one and the body is JSON."""
    if r.status_code != status:
        raise CheckFailed(f"{what} answered HTTP {r.status_code} (expected {status}): {r.text[:300]}")
    try:
        return r.json()
    except ValueError:
        raise CheckFailed(f"{what} answered a body that is not JSON: {r.text[:200]!r}") from None


def fail_on(problems: list[str], metrics: Metrics | None = None) -> None:
    if problems:
        raise CheckFailed(
            "; ".join(problems[:6]) + (f" (+{len(problems) - 6} more)" if len(problems) > 6 else ""), metrics
        )


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1); 0 for no values."""
    if not values:
        return 0.0
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q * len(s)) - 1))
    return s[k]


def chat_body(ctx: Context, content: str, max_tokens: int, **extra: Any) -> dict[str, Any]:
    return {
        "model": ctx.model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
        **extra,
    }
