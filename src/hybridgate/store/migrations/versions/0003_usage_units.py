"""Ledger rows in usage units beyond tokens: the operation, images, GPU-seconds and training tokens.

Existing rows keep their meaning: chat or completions calls with no images, GPU-seconds or training tokens
(the operation stays NULL for rows written before it was recorded).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ledger") as batch:
        batch.add_column(sa.Column("operation", sa.String(32), nullable=True))
        batch.add_column(sa.Column("images", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("gpu_seconds", sa.Float(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("training_tokens", sa.BigInteger(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("ledger") as batch:
        batch.drop_column("training_tokens")
        batch.drop_column("gpu_seconds")
        batch.drop_column("images")
        batch.drop_column("operation")
