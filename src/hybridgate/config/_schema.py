"""Pydantic models of the configuration file. Parsed once at start; never re-read on the request path."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from hybridgate.config._catalogue import CATALOGUE, lookup

# A backend kind is a name in the adapter registry (`hybridgate.backends.KINDS`); checked when the
# backends are built, since the registry lives a layer above the config.
_KIND = r"^[a-z][a-z0-9_]*$"
# Kinds of hosted APIs with list prices in the catalogue: priced from it when the config sets no price.
_CATALOGUE_BY_DEFAULT = frozenset({"gemini"})


class _Strict(BaseModel):
    # A typo in a config key is an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_body_bytes: int = Field(1024 * 1024, ge=1)
    # GET /metrics shows series naming API keys (spend, budgets, refusals per key) only to the master key
    # or to `Authorization: Bearer <metrics_token>`; everything else on it is public.
    metrics_token: str | None = Field(None, min_length=16)
    # The longest a request's body may take to arrive, from the moment its headers did (408 past it).
    body_timeout_s: float = Field(30.0, gt=0)
    workers: int = Field(1, ge=1)
    log_requests: bool = True
    # A request whose backends are all still starting (a model loading, a pod warming) waits this long
    # for one to become ready before it gets 503 with Retry-After.
    warming_wait_s: float = Field(30.0, ge=0)


class PriceConfig(_Strict):
    """What one call costs, as a sum over usage units; the ledger multiplies (`hybridgate.ledger.price`).

    Tokens per million, a dedicated GPU per hour of the call's wall time, requests, images, GPU-seconds
    a backend reports (a pod or a training run, per hour), training tokens per million, and training
    steps (a hosted LoRA trainer such as fal's bills by the steps asked for).
    """

    input_per_mtok: float = Field(0.0, ge=0)
    output_per_mtok: float = Field(0.0, ge=0)
    per_hour: float = Field(0.0, ge=0)
    per_request: float = Field(0.0, ge=0)
    per_image: float = Field(0.0, ge=0)
    per_gpu_hour: float = Field(0.0, ge=0)
    training_per_mtok: float = Field(0.0, ge=0)
    # Per training step of a LoRA training job (reserved as per_step x the job's steps before it is sent).
    per_step: float = Field(0.0, ge=0)
    # Prompts over this many tokens are billed at the long_* prices instead (a long-context tier).
    long_context_tokens: int | None = Field(None, ge=1)
    long_input_per_mtok: float = Field(0.0, ge=0)
    long_output_per_mtok: float = Field(0.0, ge=0)
    # A zero price is normally "we do not know"; `free: true` says it really costs nothing.
    free: bool = False
    # Token prices from the shipped catalogue (config/_catalogue.py): "auto" looks up each of the
    # backend's own model names, any other value names one entry for all of them. Fields set here win.
    catalogue: str | None = None

    @field_validator("catalogue")
    @classmethod
    def _known_entry(cls, v: str | None) -> str | None:
        if v is not None and v != "auto" and lookup(v) is None:
            raise ValueError(
                f"{v!r} is not in the price catalogue; use 'auto' or one of: {', '.join(sorted(CATALOGUE))}"
            )
        return v

    def for_model(self, model: str) -> PriceConfig:
        """This price with the catalogue's figures for `model` filled in (itself when no catalogue is set).

        A model the catalogue does not list keeps only the fields set here: usually none, an unknown cost."""
        if self.catalogue is None:
            return self
        entry = lookup(model if self.catalogue == "auto" else self.catalogue)
        if entry is None:
            return self
        own = self.model_fields_set
        filled = {
            k: getattr(entry, k)
            for k in (
                "input_per_mtok",
                "output_per_mtok",
                "long_context_tokens",
                "long_input_per_mtok",
                "long_output_per_mtok",
            )
            if k not in own
        }
        return self.model_copy(update=filled)

    @property
    def is_zero(self) -> bool:
        return not (
            self.input_per_mtok
            or self.output_per_mtok
            or self.per_hour
            or self.per_request
            or self.per_image
            or self.per_gpu_hour
            or self.training_per_mtok
            or self.per_step
            or self.long_input_per_mtok
            or self.long_output_per_mtok
        )


class TimeoutsConfig(_Strict):
    """What each deadline bounds (README, "Routing, health and fallback")."""

    # Opening the TCP (and TLS) connection.
    connect_s: float = Field(2.0, gt=0)
    # Streams: the wait for the first byte, and then any gap between bytes (a stalled stream fails fast).
    first_byte_s: float = Field(30.0, gt=0)
    # A whole call, streamed or not.
    total_s: float = Field(300.0, gt=0)
    # Non-streamed calls: the wait for the whole answer, which arrives in one piece only once it is all
    # generated (unset: total_s). A long answer is not a stalled stream.
    answer_s: float | None = Field(None, gt=0)

    @property
    def answer(self) -> float:
        return min(self.answer_s or self.total_s, self.total_s)


class HealthConfig(_Strict):
    path: str = "/health"
    interval_s: float = Field(5.0, gt=0)
    timeout_s: float = Field(2.0, gt=0)
    failures_to_trip: int = Field(3, ge=1)
    cooldown_s: float = Field(10.0, ge=0)
    enabled: bool = True
    # "passive": no probes, health comes from real calls only (a paid hosted API may bill a probe); the
    # same as `enabled: false`. Unset: the kind's default (active where a probe is free, passive where not).
    mode: Literal["active", "passive"] | None = None


class ConcurrencyConfig(_Strict):
    """At most `max` calls in flight at a backend; up to `queue` more wait (in arrival order) for a slot.

    A backend that is full is skipped for the next candidate; only when every candidate is full does a
    call wait, at most `queue_timeout_s`. For HTTP backends `max` also caps connections to its origin.
    """

    max: int = Field(ge=1)
    queue: int = Field(16, ge=0)
    queue_timeout_s: float = Field(30.0, gt=0)


class MockOptions(_Strict):
    """Behaviour of the built-in mock backend (kind: mock); the same knobs as `hybridgate mock-server`.

    Every number is finite and bounded, so no setting can overflow a timer: a wait of at most an hour, a
    speed of 0 (instant) or from one token in 1,000 s to a million a second.
    """

    latency_ms: float = Field(0.0, ge=0, allow_inf_nan=False)
    ttft_ms: float | None = Field(None, ge=0, allow_inf_nan=False)
    tokens_per_s: float = Field(0.0, ge=0, allow_inf_nan=False)
    fail_rate: float = Field(0.0, ge=0, le=1, allow_inf_nan=False)
    fail_status: int = Field(500, ge=400, le=599)
    hang: bool = False
    drop_mid_stream: bool = False
    stall_mid_stream: bool = False
    seed: int = 0

    @field_validator("latency_ms", "ttft_ms")
    @classmethod
    def _at_most_an_hour(cls, v: float | None) -> float | None:
        if v is not None and v > 3_600_000:
            raise ValueError("must be at most 3600000 ms (one hour)")
        return v

    @field_validator("tokens_per_s")
    @classmethod
    def _a_plausible_speed(cls, v: float) -> float:
        if v and not 0.001 <= v <= 1_000_000:
            raise ValueError("must be 0 (instant) or from 0.001 to 1000000 tokens per second")
        return v


class BackendConfig(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    kind: str = Field(pattern=_KIND)
    base_url: str | None = None
    api_key: str | None = None
    # public model name -> the backend's own model name
    models: dict[str, str] = Field(min_length=1)
    priority: int = 10
    group: str | None = None
    price: PriceConfig = PriceConfig()
    timeouts: TimeoutsConfig = TimeoutsConfig()
    health: HealthConfig = HealthConfig()
    concurrency: ConcurrencyConfig | None = None
    # The mock's knobs (kind mock); the same as `options` for that kind, kept for existing configs.
    mock: MockOptions = MockOptions()
    # Kind-specific settings, validated by the kind's own options model when the backends are built
    # (e.g. llamacpp's model path, context size, prompt template).
    options: dict[str, Any] = Field(default_factory=dict)
    # Per backend model name, the price with catalogue figures filled in (see `price_for`).
    _prices: tuple[PriceConfig, dict[str, PriceConfig]] | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _catalogue_by_default(self) -> BackendConfig:
        # A hosted API's list prices are known: a backend of such a kind with no `price` at all is priced
        # from the catalogue by its model names, so adding it takes no price lines.
        if "price" not in self.model_fields_set and self.kind in _CATALOGUE_BY_DEFAULT:
            object.__setattr__(self, "price", PriceConfig(catalogue="auto"))
        return self

    def price_for(self, backend_model: str) -> PriceConfig:
        """The price of a call to this backend's model `backend_model` (its own name, as sent)."""
        price = self.price
        if price.catalogue is None:
            return price
        cached = self._prices
        if cached is None or cached[0] is not price:
            cached = self._prices = (price, {m: price.for_model(m) for m in self.models.values()})
        found = cached[1].get(backend_model)
        return found if found is not None else price.for_model(backend_model)

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v.startswith(("http://", "https://")):
            raise ValueError("base_url must start with http:// or https://")
        return v.rstrip("/")


class StorageConfig(_Strict):
    """Where artifacts (generated images, videos, LoRA files) are kept (`hybridgate.storage`).

    `url` unset: local files in a `files` folder beside the SQLite database (`./.hybridgate/files` with
    PostgreSQL). A path or `file:///path`: local files there. `s3://bucket/prefix`: an S3-compatible store,
    with the endpoint and credentials below or from the usual AWS environment variables.
    """

    url: str | None = None
    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    # The largest object accepted (a put past it fails and leaves nothing behind).
    max_object_bytes: int = Field(2 * 1024**3, ge=1)
    # Download links the gateway signs (GET /v1/files/...): HMAC key and lifetime. Unset key: a random one
    # kept in the data folder, shared by every process on this machine; set it when replicas share storage.
    signing_secret: str | None = Field(None, min_length=16)
    url_ttl_s: int = Field(3600, ge=1, le=7 * 86400)


class JobsConfig(_Strict):
    """Durable generation jobs (`hybridgate.jobs`): in-process workers on leased rows in the database."""

    enabled: bool = True
    # Jobs this process runs at once (each mostly waits on a provider).
    workers: int = Field(8, ge=1, le=1000)
    # A worker holds a job for lease_s and renews it every lease_s/3; a dead process's jobs are taken over
    # by a live one once the lease has run out.
    lease_s: float = Field(30.0, ge=1, le=3600)
    # How often an idle worker looks for work.
    claim_interval_s: float = Field(0.5, gt=0, le=60)
    # The slow poll of a provider while its webhook is awaited (or the only way, without a public URL).
    provider_poll_s: float = Field(5.0, gt=0, le=3600)
    # Jobs of one key running at once (the rest wait, queued).
    max_per_key: int = Field(4, ge=1)
    # Tries of a failed step (with exponential backoff) before the job fails.
    max_attempts: int = Field(5, ge=1, le=100)
    # The longest a job may run; reserved at its price per GPU-hour and the bound of every wait.
    time_bound_s: float = Field(3600.0, gt=0, le=7 * 86400)
    # How long POST /v1/images/generations waits for its job before answering 202 with the job id.
    images_wait_s: float = Field(60.0, ge=0, le=600)
    # This gateway's address as providers and users reach it (webhooks to /v1/jobs/webhooks/..., links).
    # Unset: no provider webhooks (the poll does the work) and links relative to the request's host.
    public_url: str | None = None

    @field_validator("public_url")
    @classmethod
    def _public(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("public_url must start with http:// or https://")
        return v.rstrip("/") if v else v


class Config(_Strict):
    server: ServerConfig = ServerConfig()
    backends: list[BackendConfig] = Field(min_length=1)
    database: str = "sqlite:///./.hybridgate/hybridgate.db"
    storage: StorageConfig = StorageConfig()
    jobs: JobsConfig = JobsConfig()
    # The training API (hybridgate.training.TrainingConfig validates it when the gateway is built).
    training: dict[str, Any] = Field(default_factory=dict)
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
