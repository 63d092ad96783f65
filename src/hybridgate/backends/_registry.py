"""The backend kinds: a table from kind name to adapter class, imported only when a backend uses it.

Adding a kind is one adapter module and one line here. Each adapter declares the operations it
implements and the pydantic model of its `options`, which is validated when the backends are built.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hybridgate.backends._base import Backend
    from hybridgate.config import BackendConfig

# kind -> "module:Class". Lazily imported: optional extras (llama-cpp-python, cloud SDKs) stay optional.
KINDS: dict[str, str] = {
    "mock": "hybridgate.backends.mock:MockBackend",
    "openai": "hybridgate.backends.openai_http:OpenAIBackend",
    "llamacpp": "hybridgate.backends.llamacpp:LlamaCppBackend",
    "gemini": "hybridgate.backends.gemini:GeminiBackend",
    "pod": "hybridgate.backends.pod:PodBackend",
    "fal": "hybridgate.backends.fal:FalBackend",
    "comfyui": "hybridgate.backends.comfyui:ComfyUIBackend",
    "mockgen": "hybridgate.backends.mockgen:MockGenBackend",
    "lora": "hybridgate.training._serve:AdapterBackend",
}


def adapter_class(kind: str) -> type[Backend]:
    """The adapter class of a kind; ValueError naming the known kinds for an unknown one."""
    target = KINDS.get(kind)
    if target is None:
        raise ValueError(f"unknown backend kind {kind!r}; known kinds: {', '.join(sorted(KINDS))}")
    module, _, name = target.partition(":")
    cls: type[Backend] = getattr(importlib.import_module(module), name)
    return cls


def build_backend(config: BackendConfig) -> Backend:
    """Create the adapter for a backend, its options validated by the kind's own model.

    Raises ValueError naming the backend and the field for an unknown kind or invalid options.
    """
    try:
        cls = adapter_class(config.kind)
    except ValueError as e:
        raise ValueError(f"backend '{config.name}': {e}") from None
    return cls(config)  # Backend.__init__ validates the options: ValueError naming backend and field


__all__ = ["KINDS", "adapter_class", "build_backend"]
