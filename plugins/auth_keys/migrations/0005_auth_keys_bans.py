"""auth_keys: a user's ban (`users.banned_at`)

Revision ID: auth_keys_0005
Revises: auth_keys_0004
Create Date: 2026-12-02

NULL for every existing user: nobody is banned until an admin bans them.
"""

import sqlalchemy as sa
from alembic import op

revision = "auth_keys_0005"
down_revision = "auth_keys_0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("banned_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_column("banned_at")
