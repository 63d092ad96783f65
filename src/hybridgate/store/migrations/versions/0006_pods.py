"""Pod pools: the lease row that makes one gateway process the owner of a pool's decisions.

Revision ID: 0006
Revises: 0005 (the training tables)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pod_leases",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("wanted_at", sa.Float(), nullable=False, server_default="0"),
        sa.Column("active_at", sa.Float(), nullable=False, server_default="0"),
    )


def downgrade() -> None:
    op.drop_table("pod_leases")
