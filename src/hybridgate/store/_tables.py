"""The tables behind keys and the ledger, as SQLAlchemy Core (one definition for SQLite and PostgreSQL).

Times are epoch seconds (double precision): comparable and portable across both databases. The ledger also
stores the UTC day as text, so grouping by day needs no dialect-specific date functions.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

# Stable constraint names, so migrations can refer to them on every backend.
metadata = MetaData(
    naming_convention={
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(200), nullable=False),
    # The first characters of the secret, shown in listings so a person can tell keys apart.
    Column("prefix", String(16), nullable=False),
    # sha256 of the secret, hex; the secret itself is never stored.
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("budget_usd", Float, nullable=True),
    Column("rpm", Integer, nullable=True),
    # JSON list of public model names the key may use; NULL means every model.
    Column("models", Text, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=True),
    Column("revoked_at", Float, nullable=True),
    # Added by revision 0002 with the ledger: kept equal to the sum of the key's ledger costs.
    Column("spent_usd", Float, nullable=False, server_default="0"),
)

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit identity.
_ROW_ID = BigInteger().with_variant(Integer(), "sqlite")

ledger = Table(
    "ledger",
    metadata,
    Column("id", _ROW_ID, primary_key=True, autoincrement=True),
    Column("ts", Float, nullable=False),
    Column("day", String(10), nullable=False),
    Column("request_id", String(64), nullable=False),
    Column("key_id", String(32), nullable=True),
    Column("key_name", String(200), nullable=False),
    Column("model", String(200), nullable=False),
    Column("backend", String(200), nullable=False),
    Column("backend_model", String(200), nullable=False),
    Column("input_tokens", Integer, nullable=False),
    Column("output_tokens", Integer, nullable=False),
    # True when the backend reported no usage and the tokens were counted or estimated here.
    Column("estimated", Boolean, nullable=False),
    Column("duration_s", Float, nullable=False),
    Column("status", Integer, nullable=True),
    Column("ok", Boolean, nullable=False),
    Column("streamed", Boolean, nullable=False),
    Column("error", Text, nullable=True),
    Column("cost_usd", Float, nullable=False),
    # Added by revision 0003: usage in units beyond tokens, and which operation the attempt ran.
    Column("operation", String(32), nullable=True),
    Column("images", Integer, nullable=False, server_default="0"),
    Column("gpu_seconds", Float, nullable=False, server_default="0"),
    Column("training_tokens", BigInteger, nullable=False, server_default="0"),
    Index("ix_ledger_key_id_ts", "key_id", "ts"),
    Index("ix_ledger_ts", "ts"),
)

# Durable generation jobs (revision 0004): one row per job, the state machine's checkpoint. A worker
# holds a job while `lease_expires` is ahead of the clock; every write it makes checks `lease_owner`.
jobs = Table(
    "jobs",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("key_id", String(32), nullable=True),
    Column("key_name", String(200), nullable=False),
    Column("type", String(32), nullable=False),
    Column("model", String(200), nullable=False),
    Column("status", String(16), nullable=False),
    # The step to run next: submit, wait, mirror, record, done.
    Column("step", String(16), nullable=False),
    Column("input", Text, nullable=False),  # JSON
    # "<key id or ->:<Idempotency-Key header>": a retried submit finds the job it made.
    Column("idempotency", String(300), nullable=True, unique=True),
    Column("backend", String(200), nullable=True),
    Column("backend_model", String(200), nullable=True),
    # Set the moment before the provider is called; with no request id after it, the outcome is unknown.
    Column("submit_sent_at", Float, nullable=True),
    Column("provider_request_id", String(200), nullable=True),
    Column("provider", Text, nullable=True),  # JSON: the provider's URLs and ids for this request
    Column("progress", Float, nullable=False, server_default="0"),
    Column("logs", Text, nullable=True),  # JSON list, the provider's log lines (the newest 200)
    Column("result", Text, nullable=True),  # JSON: the provider's output, copied when it completed
    Column("artifacts", Text, nullable=True),  # JSON list: what was mirrored into storage
    Column("error", Text, nullable=True),  # JSON: {code, message}
    Column("cost_reserved", Float, nullable=False, server_default="0"),
    Column("cost_usd", Float, nullable=True),  # settled
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_run_at", Float, nullable=False),
    Column("lease_owner", String(64), nullable=True),
    Column("lease_expires", Float, nullable=True),
    Column("cancel_requested", Boolean, nullable=False, server_default="0"),
    # A provider's webhook arrived (the owner polls at once when it sees this move).
    Column("notified_at", Float, nullable=True),
    Column("webhook_url", Text, nullable=True),
    Column("metadata", Text, nullable=True),  # JSON object the client attached
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("started_at", Float, nullable=True),
    Column("finished_at", Float, nullable=True),
    Index("ix_jobs_status_next_run_at", "status", "next_run_at"),
    Index("ix_jobs_key_id_created_at", "key_id", "created_at"),
    Index("ix_jobs_provider_request_id", "provider_request_id"),
)

# What happened to a job, in order: read by GET /v1/jobs/{id}/events (server-sent events), from any process.
job_events = Table(
    "job_events",
    metadata,
    Column("id", _ROW_ID, primary_key=True, autoincrement=True),
    Column("job_id", String(40), nullable=False),
    Column("ts", Float, nullable=False),
    Column("type", String(32), nullable=False),
    Column("data", Text, nullable=False),  # JSON
    Index("ix_job_events_job_id_id", "job_id", "id"),
)

# Outgoing webhooks to the users' URLs: one row per job end, retried until delivered or given up.
webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", String(40), primary_key=True),  # the stable delivery id (webhook-id header)
    Column("job_id", String(40), nullable=False),
    Column("url", Text, nullable=False),
    Column("body", Text, nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_try_at", Float, nullable=False),
    Column("delivered_at", Float, nullable=True),
    Column("failed_at", Float, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("lease_expires", Float, nullable=True),
    Column("created_at", Float, nullable=False),
    Index("ix_webhook_deliveries_next_try_at", "delivered_at", "failed_at", "next_try_at"),
)

# Trained LoRA versions: a name per key, versions 1, 2, ... with their files in storage.
lora_versions = Table(
    "lora_versions",
    metadata,
    Column("id", _ROW_ID, primary_key=True, autoincrement=True),
    Column("key_id", String(32), nullable=True),
    Column("owner", String(64), nullable=False),  # key id, or "-" for the master key / an open gateway
    Column("name", String(100), nullable=False),
    Column("version", Integer, nullable=False),
    Column("job_id", String(40), nullable=False, unique=True),
    Column("trigger_word", String(200), nullable=True),
    Column("steps", Integer, nullable=False),
    Column("is_style", Boolean, nullable=False),
    Column("weights_uri", Text, nullable=False),
    Column("weights_key", Text, nullable=False),
    Column("weights_sha256", String(64), nullable=False),
    Column("config_uri", Text, nullable=True),
    Column("config_key", Text, nullable=True),
    Column("config_sha256", String(64), nullable=True),
    Column("provider_request_id", String(200), nullable=True),
    Column("backend", String(200), nullable=False),
    Column("cost_usd", Float, nullable=False, server_default="0"),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("owner", "name", "version"),
)

__all__ = ["api_keys", "job_events", "jobs", "ledger", "lora_versions", "metadata", "webhook_deliveries"]
