"""credits: an index of usage rows by (account_id, user_id, id), for one member's rows of a team's account

Revision ID: credits_0005
Revises: credits_0004
Create Date: 2026-12-04

`GET /api/team/usage/mine` (plugins/teams) reads the caller's newest rows on the team's account
(`account_id = ? AND user_id = ? ORDER BY id DESC LIMIT n`). Through (account_id, id) it walked the whole
team's rows to find the member's; this index goes straight to them.
"""

from __future__ import annotations

from alembic import op

revision = "credits_0005"
down_revision = "credits_0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_usage_records_account_user", "usage_records", ["account_id", "user_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_usage_records_account_user", table_name="usage_records")
