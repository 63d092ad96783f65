"""The shipped price catalogue: list prices of well-known hosted models, which a backend can refer to.

`price: {catalogue: auto}` prices each call by the backend's own model name; `price: {catalogue:
gemini-2.5-flash}` prices every model of the backend as that entry. A `gemini` backend with no `price` at
all uses `auto`. A model the catalogue does not list has an unknown cost (a budgeted key may not use it).

The figures are the vendors' published standard (paid tier, text, not batch, not cached) prices in USD per
million tokens on the date below. hybridgate never fetches prices (it runs without internet): check them
against the vendor's page, and set `input_per_mtok` / `output_per_mtok` on the backend to override any
field (a negotiated rate, a newer list price). Thinking tokens are billed as output by both vendors, and
hybridgate counts them as completion tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

# The day these prices were last checked against the vendors' pricing pages.
AS_OF = "2025-09-01"


@dataclass(frozen=True, slots=True)
class CatalogueEntry:
    vendor: str
    input_per_mtok: float
    output_per_mtok: float
    # Prompts longer than this many tokens are billed at the `long_*` prices (Gemini 2.5 Pro's tier).
    long_context_tokens: int | None = None
    long_input_per_mtok: float = 0.0
    long_output_per_mtok: float = 0.0


CATALOGUE: dict[str, CatalogueEntry] = {
    # Google Gemini API (ai.google.dev/gemini-api/docs/pricing)
    "gemini-2.5-pro": CatalogueEntry("google", 1.25, 10.00, 200_000, 2.50, 15.00),
    "gemini-2.5-flash": CatalogueEntry("google", 0.30, 2.50),
    "gemini-2.5-flash-lite": CatalogueEntry("google", 0.10, 0.40),
    "gemini-2.0-flash": CatalogueEntry("google", 0.10, 0.40),
    "gemini-2.0-flash-lite": CatalogueEntry("google", 0.075, 0.30),
    # OpenAI API (openai.com/api/pricing)
    "gpt-5": CatalogueEntry("openai", 1.25, 10.00),
    "gpt-5-mini": CatalogueEntry("openai", 0.25, 2.00),
    "gpt-5-nano": CatalogueEntry("openai", 0.05, 0.40),
    "gpt-4.1": CatalogueEntry("openai", 2.00, 8.00),
    "gpt-4.1-mini": CatalogueEntry("openai", 0.40, 1.60),
    "gpt-4.1-nano": CatalogueEntry("openai", 0.10, 0.40),
    "gpt-4o": CatalogueEntry("openai", 2.50, 10.00),
    "gpt-4o-mini": CatalogueEntry("openai", 0.15, 0.60),
    "o3": CatalogueEntry("openai", 2.00, 8.00),
    "o3-mini": CatalogueEntry("openai", 1.10, 4.40),
    "o4-mini": CatalogueEntry("openai", 1.10, 4.40),
}


def lookup(model: str) -> CatalogueEntry | None:
    """The entry for a model name as a backend knows it (Gemini's `models/` prefix allowed); exact names
    only: a dated snapshot (gpt-4o-2024-05-13) may have had another price, so it is not guessed."""
    return CATALOGUE.get(model.removeprefix("models/"))


__all__ = ["AS_OF", "CATALOGUE", "CatalogueEntry", "lookup"]
