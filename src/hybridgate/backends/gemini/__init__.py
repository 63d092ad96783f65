"""The `gemini` backend kind: Google's Gemini API in its own protocol, answered in OpenAI's shapes."""

from hybridgate.backends.gemini._backend import DEFAULT_BASE_URL, GeminiBackend, GeminiOptions, http_error

__all__ = ["DEFAULT_BASE_URL", "GeminiBackend", "GeminiOptions", "http_error"]
