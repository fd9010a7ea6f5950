"""auth_keys: an API key's spend limit (milli-credits per day, per month or in total)

Revision ID: auth_keys_0004
Revises: auth_keys_0003
Create Date: 2026-12-01

Both columns are NULL for a key without a limit, which every existing key is; the credits plugin enforces
the limit (its spend scopes), reading it from the key's cached principal.
"""

import sqlalchemy as sa
from alembic import op

revision = "auth_keys_0004"
down_revision = "auth_keys_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("limit_milli", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("limit_period", sa.String(8), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("limit_period")
        batch.drop_column("limit_milli")
