"""Prices x usage units -> USD. The one place a cost is computed, for attempts and for reservations."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hybridgate.config import BackendConfig, PriceConfig
    from hybridgate.protocol import Usage
    from hybridgate.router import Attempt


def price_usage(price: PriceConfig, usage: Usage, seconds: float) -> float:
    """USD for `usage` at `price`; a per-hour price is prorated by `seconds` of the call's wall time."""
    cost = usage.requests * price.per_request
    long = price.long_context_tokens
    if long is not None and usage.prompt_tokens > long:
        # A long-context tier prices the whole call, input and output, at its rates (as Gemini bills).
        cost += (
            usage.prompt_tokens * price.long_input_per_mtok
            + usage.completion_tokens * price.long_output_per_mtok
        ) / 1e6
    elif price.input_per_mtok or price.output_per_mtok:
        cost += (
            usage.prompt_tokens * price.input_per_mtok + usage.completion_tokens * price.output_per_mtok
        ) / 1e6
    if price.per_hour:
        cost += seconds * price.per_hour / 3600.0
    if price.per_image:
        cost += usage.images * price.per_image
    if price.per_gpu_hour:
        cost += usage.gpu_seconds * price.per_gpu_hour / 3600.0
    if price.training_per_mtok:
        cost += usage.training_tokens * price.training_per_mtok / 1e6
    if price.per_step:
        cost += usage.training_steps * price.per_step
    return cost


def attempt_cost(backend: BackendConfig, attempt: Attempt) -> float:
    """What one attempt cost on `backend`: its usage and duration at the price of the model it called."""
    return price_usage(backend.price_for(attempt.backend_model), attempt.usage, attempt.duration_s)


__all__ = ["attempt_cost", "price_usage"]
