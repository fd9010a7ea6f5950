"""notify: a message may wait for another one to the same recipient (a user's second language)

Revision ID: notify_0003
Revises: notify_0002
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "notify_0003"
down_revision = "notify_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("notify_outbox", sa.Column("after_key", sa.String(160), nullable=True))


def downgrade() -> None:
    op.drop_column("notify_outbox", "after_key")
