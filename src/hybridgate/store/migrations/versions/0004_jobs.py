"""Durable generation jobs: the jobs themselves, their events, outgoing webhook deliveries, LoRA versions.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=True),
        sa.Column("key_name", sa.String(200), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("step", sa.String(16), nullable=False),
        sa.Column("input", sa.Text(), nullable=False),
        sa.Column("idempotency", sa.String(300), nullable=True),
        sa.Column("backend", sa.String(200), nullable=True),
        sa.Column("backend_model", sa.String(200), nullable=True),
        sa.Column("submit_sent_at", sa.Float(), nullable=True),
        sa.Column("provider_request_id", sa.String(200), nullable=True),
        sa.Column("provider", sa.Text(), nullable=True),
        sa.Column("progress", sa.Float(), nullable=False, server_default="0"),
        sa.Column("logs", sa.Text(), nullable=True),
        sa.Column("result", sa.Text(), nullable=True),
        sa.Column("artifacts", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("cost_reserved", sa.Float(), nullable=False, server_default="0"),
        sa.Column("cost_usd", sa.Float(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("next_run_at", sa.Float(), nullable=False),
        sa.Column("lease_owner", sa.String(64), nullable=True),
        sa.Column("lease_expires", sa.Float(), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False, server_default="0"),
        sa.Column("notified_at", sa.Float(), nullable=True),
        sa.Column("webhook_url", sa.Text(), nullable=True),
        sa.Column("metadata", sa.Text(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=True),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_jobs"),
        sa.UniqueConstraint("idempotency", name="uq_jobs_idempotency"),
    )
    op.create_index("ix_jobs_status_next_run_at", "jobs", ["status", "next_run_at"])
    op.create_index("ix_jobs_key_id_created_at", "jobs", ["key_id", "created_at"])
    op.create_index("ix_jobs_provider_request_id", "jobs", ["provider_request_id"])
    op.create_table(
        "job_events",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("job_id", sa.String(40), nullable=False),
        sa.Column("ts", sa.Float(), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_job_events"),
    )
    op.create_index("ix_job_events_job_id_id", "job_events", ["job_id", "id"])
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("job_id", sa.String(40), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("next_try_at", sa.Float(), nullable=False),
        sa.Column("delivered_at", sa.Float(), nullable=True),
        sa.Column("failed_at", sa.Float(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("lease_expires", sa.Float(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_deliveries"),
    )
    op.create_index(
        "ix_webhook_deliveries_next_try_at",
        "webhook_deliveries",
        ["delivered_at", "failed_at", "next_try_at"],
    )
    op.create_table(
        "lora_versions",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("key_id", sa.String(32), nullable=True),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(40), nullable=False),
        sa.Column("trigger_word", sa.String(200), nullable=True),
        sa.Column("steps", sa.Integer(), nullable=False),
        sa.Column("is_style", sa.Boolean(), nullable=False),
        sa.Column("weights_uri", sa.Text(), nullable=False),
        sa.Column("weights_key", sa.Text(), nullable=False),
        sa.Column("weights_sha256", sa.String(64), nullable=False),
        sa.Column("config_uri", sa.Text(), nullable=True),
        sa.Column("config_key", sa.Text(), nullable=True),
        sa.Column("config_sha256", sa.String(64), nullable=True),
        sa.Column("provider_request_id", sa.String(200), nullable=True),
        sa.Column("backend", sa.String(200), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=False, server_default="0"),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_lora_versions"),
        sa.UniqueConstraint("job_id", name="uq_lora_versions_job_id"),
        sa.UniqueConstraint("owner", "name", "version", name="uq_lora_versions_owner_name_version"),
    )


def downgrade() -> None:
    op.drop_table("lora_versions")
    op.drop_table("webhook_deliveries")
    op.drop_table("job_events")
    op.drop_table("jobs")
