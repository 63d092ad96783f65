"""The training API's tables (revision 0005): sessions, runs, checkpoints, futures, sampling sessions.

Declared on the store's metadata so one schema covers the database; times are epoch seconds as elsewhere.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Float, Index, Integer, LargeBinary, String, Table, Text

from hybridgate.store import metadata

training_sessions = Table(
    "training_sessions",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("key_id", String(32), nullable=True),
    Column("created_at", Float, nullable=False),
    Column("heartbeat_at", Float, nullable=False),
    Column("finished_at", Float, nullable=True),
    Column("finish_reason", String(32), nullable=True),
)

training_runs = Table(
    "training_runs",
    metadata,
    Column("id", String(200), primary_key=True),
    Column("key_id", String(32), nullable=True),
    Column("key_name", String(200), nullable=False),
    Column("api", String(16), nullable=False),  # "tinker" or "json"
    Column("base_model", String(200), nullable=False),
    Column("lora", Text, nullable=False),  # JSON: rank, alpha, dropout, train_attn, train_mlp, train_unembed
    Column("status", String(16), nullable=False),  # active, interrupted, deleted
    Column("steps", Integer, nullable=False, server_default="0"),
    Column("train_tokens", BigInteger, nullable=False, server_default="0"),
    Column("prefill_tokens", BigInteger, nullable=False, server_default="0"),
    Column("sample_tokens", BigInteger, nullable=False, server_default="0"),
    Column("gpu_seconds", Float, nullable=False, server_default="0"),
    Column("cost_usd", Float, nullable=False, server_default="0"),
    Column("loss_history", Text, nullable=False, server_default="[]"),  # JSON list of [step, loss]
    Column("user_metadata", Text, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("last_request_at", Float, nullable=False),
    Index("ix_training_runs_key_id", "key_id"),
)

training_checkpoints = Table(
    "training_checkpoints",
    metadata,
    Column("run_id", String(200), primary_key=True),
    Column("checkpoint_id", String(300), primary_key=True),  # weights/NAME, sampler_weights/NAME, merged/NAME
    Column("kind", String(32), nullable=False),
    Column("name", String(200), nullable=False),
    Column("key_id", String(32), nullable=True),
    Column("size_bytes", BigInteger, nullable=False),
    Column("optimizer", Integer, nullable=False, server_default="0"),
    Column("created_at", Float, nullable=False),
)

training_futures = Table(
    "training_futures",
    metadata,
    Column("request_id", String(64), primary_key=True),
    Column("key_id", String(32), nullable=True),
    Column("run_id", String(200), nullable=True),
    # (run, operation, seq_id) of a submit, so a retried POST gets the same future back
    Column("dedupe", String(300), nullable=True),
    Column("type", String(32), nullable=False),
    Column("status", String(16), nullable=False),  # pending, done, failed
    Column("content_type", String(64), nullable=True),
    Column("payload", LargeBinary, nullable=True),
    Column("error", Text, nullable=True),
    Column("category", String(16), nullable=True),
    Column("created_at", Float, nullable=False),
    Column("finished_at", Float, nullable=True),
    Index("ix_training_futures_dedupe", "dedupe"),
)

sampling_sessions = Table(
    "sampling_sessions",
    metadata,
    Column("id", String(200), primary_key=True),
    Column("key_id", String(32), nullable=True),
    Column("base_model", String(200), nullable=False),
    Column("model_path", String(600), nullable=True),
    Column("created_at", Float, nullable=False),
)

__all__ = [
    "sampling_sessions",
    "training_checkpoints",
    "training_futures",
    "training_runs",
    "training_sessions",
]
