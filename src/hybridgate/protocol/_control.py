"""Wire shapes of the control plane (models, health, usage, keys), for validation and for /openapi.json.

Handlers build plain dicts (the fast way); these models document them, and FastAPI checks each answer
against its model, so the published schema cannot drift from what is sent.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorDetail(_Out):
    message: str
    type: str
    param: str | None = None
    code: str | None = None
    attempts: list[dict[str, Any]] | None = None


class ErrorResponse(_Out):
    """Every error on every route, in OpenAI's shape."""

    error: ErrorDetail


class ModelCard(_Out):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(_Out):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Liveness(_Out):
    status: Literal["ok"]
    version: str
    uptime_s: float


class BackendHealth(_Out):
    name: str
    kind: str
    lifecycle: Literal["stopped", "provisioning", "warming", "ready", "draining", "failed"]
    state: str = Field(description="The adapter's own word for its state (e.g. loading)")
    healthy: bool
    routable: bool
    consecutive_failures: int
    last_error: str | None
    last_check: float | None
    last_latency_ms: float | None
    priority: int
    models: list[str]
    operations: list[str]
    health_checks: Literal["active", "passive"]
    in_flight: int
    busy_probes: int = Field(
        0, description="Health probes that timed out while calls to the backend succeeded (busy, not counted)"
    )
    concurrency: dict[str, int] | None
    model_errors: dict[str, str] = Field(description="Public model -> why this backend does not serve it")


class BackendsHealth(_Out):
    status: Literal["ok", "degraded"]
    backends: list[BackendHealth]


class UsageRow(_Out):
    group: str | None
    key_id: str | None = None
    requests: int
    attempts: int
    input_tokens: int
    output_tokens: int
    images: int
    gpu_seconds: float
    training_tokens: int
    cost_usd: float


class UsageReport(_Out):
    object: Literal["list"] = "list"
    group_by: Literal["backend", "model", "key", "day", "operation"]
    from_: float | None = Field(alias="from", serialization_alias="from")
    to: float | None
    data: list[UsageRow]
    total_cost_usd: float

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ApiKey(_Out):
    id: str
    name: str
    prefix: str
    status: Literal["active", "revoked", "expired"]
    budget: float | None = Field(description="USD; null: no budget")
    spent: float = Field(description="USD")
    rpm: int | None
    models: list[str] | None
    created_at: str
    expires_at: str | None
    revoked_at: str | None


class ApiKeyList(_Out):
    object: Literal["list"] = "list"
    data: list[ApiKey]


class NewApiKey(ApiKey):
    key: str = Field(description="The secret, shown this once")


__all__ = [
    "ApiKey",
    "ApiKeyList",
    "BackendHealth",
    "BackendsHealth",
    "ErrorDetail",
    "ErrorResponse",
    "Liveness",
    "ModelCard",
    "ModelList",
    "NewApiKey",
    "UsageReport",
    "UsageRow",
]
