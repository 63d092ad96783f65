"""Pydantic models of the configuration file. Parsed once at start; never re-read on the request path."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

BackendKind = Literal["openai", "mock", "llamacpp"]


class _Strict(BaseModel):
    # A typo in a config key is an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_body_bytes: int = Field(1024 * 1024, ge=1)
    workers: int = Field(1, ge=1)
    log_requests: bool = True


class PriceConfig(_Strict):
    """What one call costs: per million tokens, per hour of a dedicated GPU, per request, or a sum."""

    input_per_mtok: float = Field(0.0, ge=0)
    output_per_mtok: float = Field(0.0, ge=0)
    per_hour: float = Field(0.0, ge=0)
    per_request: float = Field(0.0, ge=0)
    # A zero price is normally "we do not know"; `free: true` says it really costs nothing.
    free: bool = False

    @property
    def is_zero(self) -> bool:
        return not (self.input_per_mtok or self.output_per_mtok or self.per_hour or self.per_request)

    def cost(self, input_tokens: int, output_tokens: int, seconds: float) -> float:
        """USD for one call; per-hour prices are prorated by the call's wall time."""
        return (
            input_tokens * self.input_per_mtok / 1e6
            + output_tokens * self.output_per_mtok / 1e6
            + seconds * self.per_hour / 3600.0
            + self.per_request
        )


class TimeoutsConfig(_Strict):
    connect_s: float = Field(2.0, gt=0)
    first_byte_s: float = Field(30.0, gt=0)
    total_s: float = Field(300.0, gt=0)


class HealthConfig(_Strict):
    path: str = "/health"
    interval_s: float = Field(5.0, gt=0)
    timeout_s: float = Field(2.0, gt=0)
    failures_to_trip: int = Field(3, ge=1)
    cooldown_s: float = Field(10.0, ge=0)
    enabled: bool = True


class MockOptions(_Strict):
    """Behaviour of the built-in mock backend (kind: mock); the same knobs as `hybridgate mock-server`."""

    latency_ms: float = Field(0.0, ge=0)
    ttft_ms: float | None = Field(None, ge=0)
    tokens_per_s: float = Field(0.0, ge=0)
    fail_rate: float = Field(0.0, ge=0, le=1)
    fail_status: int = Field(500, ge=400, le=599)
    hang: bool = False
    drop_mid_stream: bool = False
    stall_mid_stream: bool = False
    seed: int = 0


class BackendConfig(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    kind: BackendKind
    base_url: str | None = None
    api_key: str | None = None
    # public model name -> the backend's own model name
    models: dict[str, str] = Field(min_length=1)
    priority: int = 10
    group: str | None = None
    price: PriceConfig = PriceConfig()
    timeouts: TimeoutsConfig = TimeoutsConfig()
    health: HealthConfig = HealthConfig()
    mock: MockOptions = MockOptions()
    # kind-specific settings (e.g. llamacpp's model path, context size, prompt template)
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v.startswith(("http://", "https://")):
            raise ValueError("base_url must start with http:// or https://")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _needs_url(self) -> BackendConfig:
        if self.kind == "openai" and not self.base_url:
            raise ValueError(f"backend '{self.name}' of kind openai needs a base_url")
        return self


class Config(_Strict):
    server: ServerConfig = ServerConfig()
    backends: list[BackendConfig] = Field(min_length=1)
    database: str = "sqlite:///./.hybridgate/hybridgate.db"
    # Where the config came from, for messages; not part of the file.
    source: str = Field("<embedded default>", exclude=True)

    @model_validator(mode="after")
    def _unique_names(self) -> Config:
        seen: set[str] = set()
        for b in self.backends:
            if b.name in seen:
                raise ValueError(f"two backends are named '{b.name}'; names must be unique")
            seen.add(b.name)
        return self

    def public_models(self) -> list[str]:
        """Public model names in first-declared order."""
        out: dict[str, None] = {}
        for b in self.backends:
            for m in b.models:
                out.setdefault(m, None)
        return list(out)
