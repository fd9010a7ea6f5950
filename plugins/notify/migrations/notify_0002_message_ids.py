"""notify: find an outbox row by the provider's message id (the Cloud API's status webhooks)

Revision ID: notify_0002
Revises: notify_0001
Create Date: 2026-01-02
"""

from alembic import op

revision = "notify_0002"
down_revision = "notify_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_notify_outbox_message_id", "notify_outbox", ["provider_message_id"])


def downgrade() -> None:
    op.drop_index("ix_notify_outbox_message_id", table_name="notify_outbox")
