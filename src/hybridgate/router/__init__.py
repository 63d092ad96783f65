"""Routing: candidates by model, operation, priority, forced/preferred backend, health and capacity;
fallback; backends added and removed while serving."""

from hybridgate._capacity import Capacity, QueueFull
from hybridgate.router._health import BackendState, check_once, health_loop
from hybridgate.router._manager import (
    NO_HOOKS,
    Attempt,
    BackendManager,
    Call,
    CallHooks,
    ClientError,
    Pricer,
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
    "Capacity",
    "ClientError",
    "Pricer",
    "QueueFull",
    "Result",
    "Stream",
    "check_once",
    "health_loop",
]
