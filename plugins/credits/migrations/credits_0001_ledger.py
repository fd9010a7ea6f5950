"""credits: balances, ledger, holds and usage records

Revision ID: credits_0001
Revises:
Create Date: 2025-01-01
"""

import sqlalchemy as sa
from alembic import op

revision = "credits_0001"
down_revision = None
branch_labels = ("credits",)
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "credit_balances",
        sa.Column("account_id", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("balance_milli", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("reserved_milli", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("tier", sa.String(32), nullable=True),
        sa.Column("low_notified", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("exhausted_notified", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        mysql_charset="utf8mb4",
    )
    op.create_table(
        "credit_ledger",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("amount_milli", sa.BigInteger(), nullable=False),
        sa.Column("balance_after_milli", sa.BigInteger(), nullable=False),
        sa.Column("reference", sa.String(160), nullable=False),
        sa.Column("actor", sa.String(64), nullable=True),
        sa.Column("reason", sa.String(500), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("kind", "reference", name="uq_credit_ledger_kind_reference"),
        mysql_charset="utf8mb4",
    )
    op.create_index("ix_credit_ledger_account_id", "credit_ledger", ["account_id", "id"])
    op.create_table(
        "credit_holds",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("amount_milli", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        mysql_charset="utf8mb4",
    )
    op.create_index("ix_credit_holds_account_id", "credit_holds", ["account_id"])
    op.create_index("ix_credit_holds_expires_at", "credit_holds", ["expires_at"])
    op.create_table(
        "usage_records",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("charge_id", sa.String(32), nullable=False, unique=True),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=True),
        sa.Column("key_id", sa.BigInteger(), nullable=True),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("endpoint", sa.String(32), nullable=False),
        sa.Column("route", sa.String(16), nullable=False),
        sa.Column("upstream", sa.String(64), nullable=True),
        sa.Column("stream", sa.Boolean(), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("usage_source", sa.String(16), nullable=False),
        sa.Column("multiplier", sa.Integer(), nullable=False),
        sa.Column("cost_milli", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("latency_ms", sa.Integer(), nullable=True),
        sa.Column("ttft_ms", sa.Integer(), nullable=True),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        mysql_charset="utf8mb4",
    )
    op.create_index("ix_usage_records_request_id", "usage_records", ["request_id"])
    op.create_index("ix_usage_records_account_id", "usage_records", ["account_id", "id"])
    op.create_index("ix_usage_records_account_day", "usage_records", ["account_id", "day"])


def downgrade() -> None:
    op.drop_table("usage_records")
    op.drop_table("credit_holds")
    op.drop_table("credit_ledger")
    op.drop_table("credit_balances")
