"""SkyPilot request ids (launch, start) not known to be finished, so a restarted gateway can follow or
cancel them.

Revision ID: 0007
Revises: 0006 (pod leases)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cloud_requests",
        sa.Column("request_id", sa.String(100), primary_key=True),
        sa.Column("provider", sa.String(40), nullable=False),
        sa.Column("cluster", sa.String(200), nullable=False),
        sa.Column("verb", sa.String(40), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.Column("status", sa.String(20), nullable=True),
    )
    op.create_index("ix_cloud_requests_open", "cloud_requests", ["provider", "finished_at"])


def downgrade() -> None:
    op.drop_index("ix_cloud_requests_open", table_name="cloud_requests")
    op.drop_table("cloud_requests")
