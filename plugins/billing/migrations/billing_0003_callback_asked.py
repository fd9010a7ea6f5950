"""billing: when the payer's return last asked MyFatoorah about an order

Revision ID: billing_0003
Revises: billing_0002
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "billing_0003"
down_revision = "billing_0002"
branch_labels = None
depends_on = None

Moment = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql")


def upgrade() -> None:
    op.add_column("billing_orders", sa.Column("callback_asked_at", Moment, nullable=True))


def downgrade() -> None:
    op.drop_column("billing_orders", "callback_asked_at")
