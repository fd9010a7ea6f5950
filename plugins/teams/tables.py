"""The teams schema: who belongs to which Enterprise account, in which role, and the invitations out.

A team is an account (`account_id`, auth_keys' accounts.id); a user is in at most one team (`user_id` is
unique), so the team a portal user acts on never needs to be named. `home` marks the row of the account's
own user (the one who registered it): that user's keys are the account's own, every other member's keys on
the account are team keys. Timestamps are UTC-naive.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

ROLES = ("owner", "admin", "member", "billing")

team_members = sa.Table(
    "team_members",
    metadata,
    sa.Column("account_id", sa.BigInteger(), primary_key=True, autoincrement=False),
    sa.Column("user_id", sa.BigInteger(), primary_key=True, autoincrement=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("home", sa.Boolean(), nullable=False),
    # A member's monthly credit limit in milli-credits (None: only the account's balance limits them).
    sa.Column("monthly_limit_milli", sa.BigInteger(), nullable=True),
    # The owner offered this member the ownership; it moves when they accept.
    sa.Column("offered_owner", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("joined_at", sa.DateTime(), nullable=False),
    sa.UniqueConstraint("user_id", name="uq_team_members_user"),
)

# Only the SHA-256 of the token is kept: a copy of the table lets nobody join.
team_invitations = sa.Table(
    "team_invitations",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("account_id", sa.BigInteger(), nullable=False, index=True),
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
)
