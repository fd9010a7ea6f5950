"""core: the events table (the transactional outbox of domain events)

Revision ID: core_0001
Revises:
Create Date: 2025-06-01
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "core_0001"
down_revision = None
branch_labels = ("core",)
depends_on = None

# Leases and backoff are seconds long: MariaDB's DATETIME would drop the fraction.
Moment = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql")


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created_at", Moment, nullable=False),
        sa.Column("next_attempt_at", Moment, nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("claimed_by", sa.String(64), nullable=True),
        sa.Column("claimed_until", Moment, nullable=True),
        sa.Column("delivered_to", sa.Text(), nullable=True),
        sa.Column("delivered_at", Moment, nullable=True),
        sa.Column("last_error", sa.String(500), nullable=True),
        mysql_charset="utf8mb4",
    )
    op.create_index("ix_events_pending", "events", ["delivered_at", "next_attempt_at"])


def downgrade() -> None:
    op.drop_index("ix_events_pending", table_name="events")
    op.drop_table("events")
