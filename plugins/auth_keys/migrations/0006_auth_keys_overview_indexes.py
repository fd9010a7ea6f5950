"""auth_keys: indexes for the admins' overview (users registered since, by tier, plans active or expiring)

Revision ID: auth_keys_0006
Revises: auth_keys_0005
Create Date: 2026-12-03

The overview counts `users.created_at >= t`, `accounts.plan_expires_at` in a range and accounts by `tier`:
each count reads (a range of) its index instead of the table.
"""

from alembic import op

revision = "auth_keys_0006"
down_revision = "auth_keys_0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_users_created_at", "users", ["created_at"])
    op.create_index("ix_accounts_plan_expires_at", "accounts", ["plan_expires_at"])
    op.create_index("ix_accounts_tier", "accounts", ["tier"])


def downgrade() -> None:
    op.drop_index("ix_accounts_tier", table_name="accounts")
    op.drop_index("ix_accounts_plan_expires_at", table_name="accounts")
    op.drop_index("ix_users_created_at", table_name="users")
