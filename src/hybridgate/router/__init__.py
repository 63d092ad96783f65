"""Routing: candidate selection by model, priority, forced/preferred backend and health; fallback."""

from hybridgate.router._health import BackendState, check_once, health_loop
from hybridgate.router._manager import (
    NO_HOOKS,
    Attempt,
    BackendManager,
    Call,
    CallHooks,
    ClientError,
    Result,
    Stream,
)

__all__ = [
    "NO_HOOKS",
    "Attempt",
    "BackendManager",
    "BackendState",
    "Call",
    "CallHooks",
    "ClientError",
    "Result",
    "Stream",
    "check_once",
    "health_loop",
]
