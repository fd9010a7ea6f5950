"""billing: refunds, and the plan notices announced once per account and expiry

Revision ID: billing_0002
Revises: billing_0001
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "billing_0002"
down_revision = "billing_0001"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Moment = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql")


def upgrade() -> None:
    op.create_table(
        "billing_refunds",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("order_reference", sa.String(40), nullable=False),
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("amount_fils", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("provider_refund_id", sa.String(32), nullable=True),
        sa.Column("credits_taken_milli", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("reason", sa.String(500), nullable=False),
        sa.Column("actor_user_id", sa.BigInteger(), nullable=True),
        sa.Column("created_at", Moment, nullable=False),
        sa.Column("updated_at", Moment, nullable=False),
        sa.UniqueConstraint("key"),
        sa.UniqueConstraint("provider_refund_id"),
        mysql_charset="utf8mb4",
    )
    op.create_index("ix_billing_refunds_order", "billing_refunds", ["order_reference", "id"])
    op.create_table(
        "billing_plan_notices",
        sa.Column("account_id", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("plan_expires_at", sa.DateTime(), primary_key=True),
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("created_at", Moment, nullable=False),
        mysql_charset="utf8mb4",
    )


def downgrade() -> None:
    op.drop_table("billing_plan_notices")
    op.drop_index("ix_billing_refunds_order", table_name="billing_refunds")
    op.drop_table("billing_refunds")
