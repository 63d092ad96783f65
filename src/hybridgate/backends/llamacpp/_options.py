"""The `options` of a llamacpp backend: model file, llama.cpp settings, queue, sampling defaults."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from hybridgate.backends.llamacpp._template import PromptTemplate


class LlamaCppOptions(BaseModel):
    """`options` of a llamacpp backend, validated when the gateway starts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_path: str | None = None
    cache_dir: str | None = None
    n_ctx: int = Field(4096, ge=64)
    n_threads: int | None = Field(None, ge=1)
    n_batch: int = Field(512, ge=1)
    n_gpu_layers: int = 0
    max_queue: int = Field(8, ge=0)
    default_max_tokens: int = Field(512, ge=1)
    prompt_template: PromptTemplate | None = None
    top_k: int = Field(40, ge=0)
    min_p: float = Field(0.05, ge=0, le=1)
    repeat_penalty: float = Field(1.0, gt=0)
    load_delay_s: float = Field(0.0, ge=0)
