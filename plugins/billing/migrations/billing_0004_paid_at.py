"""billing: an index on billing_orders (status, paid_at), for the admins' overview's revenue of a month

Revision ID: billing_0004
Revises: billing_0003
Create Date: 2026-12-03
"""

from alembic import op

revision = "billing_0004"
down_revision = "billing_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_billing_orders_paid", "billing_orders", ["status", "paid_at"])


def downgrade() -> None:
    op.drop_index("ix_billing_orders_paid", table_name="billing_orders")
