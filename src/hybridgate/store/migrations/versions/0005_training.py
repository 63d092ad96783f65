"""The training API: sessions, runs, checkpoints, futures (results kept for retrieve_future) and
sampling sessions.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "training_sessions",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("key_id", sa.String(32), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("heartbeat_at", sa.Float(), nullable=False),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.Column("finish_reason", sa.String(32), nullable=True),
    )
    op.create_table(
        "training_runs",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("key_id", sa.String(32), nullable=True),
        sa.Column("key_name", sa.String(200), nullable=False),
        sa.Column("api", sa.String(16), nullable=False),
        sa.Column("base_model", sa.String(200), nullable=False),
        sa.Column("lora", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("steps", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("train_tokens", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("prefill_tokens", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("sample_tokens", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("gpu_seconds", sa.Float(), nullable=False, server_default="0"),
        sa.Column("cost_usd", sa.Float(), nullable=False, server_default="0"),
        sa.Column("loss_history", sa.Text(), nullable=False, server_default="[]"),
        sa.Column("user_metadata", sa.Text(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("last_request_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_training_runs_key_id", "training_runs", ["key_id"])
    op.create_table(
        "training_checkpoints",
        sa.Column("run_id", sa.String(200), primary_key=True),
        sa.Column("checkpoint_id", sa.String(300), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("optimizer", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("created_at", sa.Float(), nullable=False),
    )
    op.create_table(
        "training_futures",
        sa.Column("request_id", sa.String(64), primary_key=True),
        sa.Column("key_id", sa.String(32), nullable=True),
        sa.Column("run_id", sa.String(200), nullable=True),
        sa.Column("dedupe", sa.String(300), nullable=True),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("content_type", sa.String(64), nullable=True),
        sa.Column("payload", sa.LargeBinary(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("category", sa.String(16), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("finished_at", sa.Float(), nullable=True),
    )
    op.create_index("ix_training_futures_dedupe", "training_futures", ["dedupe"])
    op.create_table(
        "sampling_sessions",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("key_id", sa.String(32), nullable=True),
        sa.Column("base_model", sa.String(200), nullable=False),
        sa.Column("model_path", sa.String(600), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("sampling_sessions")
    op.drop_index("ix_training_futures_dedupe", table_name="training_futures")
    op.drop_table("training_futures")
    op.drop_table("training_checkpoints")
    op.drop_index("ix_training_runs_key_id", table_name="training_runs")
    op.drop_table("training_runs")
    op.drop_table("training_sessions")
