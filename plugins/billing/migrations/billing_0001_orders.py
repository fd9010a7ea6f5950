"""billing: orders, receipt counters and processed webhooks

Revision ID: billing_0001
Revises:
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "billing_0001"
down_revision = None
branch_labels = ("billing",)
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Moment = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql")


def upgrade() -> None:
    op.create_table(
        "billing_orders",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("reference", sa.String(40), nullable=False),
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=True),
        sa.Column("product_id", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("tier", sa.String(32), nullable=True),
        sa.Column("credits", sa.BigInteger(), nullable=False),
        sa.Column("price_fils", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("invoice_id", sa.String(32), nullable=True),
        sa.Column("payment_id", sa.String(64), nullable=True),
        sa.Column("payment_url", sa.String(1000), nullable=True),
        sa.Column("method", sa.String(64), nullable=True),
        sa.Column("locale", sa.String(2), nullable=False),
        sa.Column("label_ar", sa.String(64), nullable=False),
        sa.Column("label_en", sa.String(64), nullable=False),
        sa.Column("buyer_name", sa.String(200), nullable=True),
        sa.Column("buyer_email", sa.String(320), nullable=True),
        sa.Column("created_at", Moment, nullable=False),
        sa.Column("expires_at", Moment, nullable=False),
        sa.Column("paid_at", Moment, nullable=True),
        sa.Column("next_check_at", Moment, nullable=True),
        sa.Column("check_attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("receipt_number", sa.String(24), nullable=True),
        sa.Column("plan_expires_at", Moment, nullable=True),
        sa.Column("confirmed_fils", sa.BigInteger(), nullable=True),
        sa.Column("confirmed_currency", sa.String(8), nullable=True),
        sa.Column("updated_at", Moment, nullable=False),
        sa.UniqueConstraint("reference", name="uq_billing_orders_reference"),
        sa.UniqueConstraint("invoice_id", name="uq_billing_orders_invoice_id"),
        sa.UniqueConstraint("receipt_number", name="uq_billing_orders_receipt_number"),
        mysql_charset="utf8mb4",
    )
    op.create_index("ix_billing_orders_account", "billing_orders", ["account_id", "id"])
    op.create_index("ix_billing_orders_due", "billing_orders", ["status", "next_check_at"])
    op.create_table(
        "billing_receipt_counters",
        sa.Column("year", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("last", sa.BigInteger(), nullable=False),
        mysql_charset="utf8mb4",
    )
    op.create_table(
        "billing_webhooks",
        sa.Column("replay_key", sa.String(64), primary_key=True),
        sa.Column("reference", sa.String(100), nullable=True),
        sa.Column("version", sa.String(2), nullable=False),
        sa.Column("code", sa.Integer(), nullable=False),
        sa.Column("invoice_id", sa.String(32), nullable=True),
        sa.Column("received_at", Moment, nullable=False),
        sa.UniqueConstraint("reference", name="uq_billing_webhooks_reference"),
        mysql_charset="utf8mb4",
    )
    op.create_index("ix_billing_webhooks_received_at", "billing_webhooks", ["received_at"])


def downgrade() -> None:
    op.drop_table("billing_webhooks")
    op.drop_table("billing_receipt_counters")
    op.drop_table("billing_orders")
