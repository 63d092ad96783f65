"""hybridgate: one authenticated, OpenAI-compatible API in front of every place a team runs models."""

__version__ = "0.1.0"
