"""What a request asks a backend to do, and the units its usage is counted in.

An operation names a kind of work (chat, completions, image generation, LoRA training...); a backend
declares the operations it implements and the router only plans backends that implement the call's.
Usage carries every unit the ledger prices: tokens, images, GPU-seconds, training tokens, requests.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Operation(StrEnum):
    """Kinds of work. A StrEnum: `Operation.CHAT == "chat"`, so plain strings from config compare equal."""

    CHAT = "chat"
    COMPLETIONS = "completions"
    EMBEDDINGS = "embeddings"
    IMAGE_GENERATION = "image_generation"
    VIDEO_GENERATION = "video_generation"
    LORA_TRAINING = "lora_training"


# The OpenAI inference operations of the hot path (chat and legacy completions).
Endpoint = Operation


@dataclass(slots=True)
class Usage:
    """What one attempt consumed, in every unit a price can be set for.

    `requests` is how many billable requests the attempt counts as (1: the backend was called once).
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    # True when the backend reported no usage and the numbers were counted or estimated here.
    estimated: bool = False
    images: int = 0
    gpu_seconds: float = 0.0
    training_tokens: int = 0
    requests: int = 1
    # Training steps a LoRA training ran (priced per_step).
    training_steps: int = 0

    def as_dict(self) -> dict[str, int]:
        """OpenAI's `usage` object (tokens only: the other units are the ledger's, not the client's)."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }

    @classmethod
    def from_dict(cls, d: Any) -> Usage | None:
        if not isinstance(d, dict):
            return None
        try:
            return cls(int(d.get("prompt_tokens") or 0), int(d.get("completion_tokens") or 0))
        except (TypeError, ValueError):
            return None


__all__ = ["Endpoint", "Operation", "Usage"]
