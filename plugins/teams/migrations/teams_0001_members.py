"""teams: memberships and invitations

Revision ID: teams_0001
Revises:
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "teams_0001"
down_revision = None
branch_labels = ("teams",)
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "team_members",
        sa.Column("account_id", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("user_id", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("home", sa.Boolean(), nullable=False),
        sa.Column("monthly_limit_milli", sa.BigInteger(), nullable=True),
        sa.Column("offered_owner", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("joined_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("user_id", name="uq_team_members_user"),
        mysql_charset="utf8mb4",
    )
    op.create_table(
        "team_invitations",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("email", sa.String(254), nullable=True),
        sa.Column("phone", sa.String(20), nullable=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("invited_by", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
        sa.Column("accepted_at", sa.DateTime(), nullable=True),
        sa.Column("accepted_by", sa.BigInteger(), nullable=True),
        mysql_charset="utf8mb4",
    )
    op.create_index("ix_team_invitations_account_id", "team_invitations", ["account_id"])


def downgrade() -> None:
    op.drop_table("team_invitations")
    op.drop_table("team_members")
