"""The auth schema: accounts (who pays), users (who logs in), login sessions and API keys.

Other plugins read `accounts.tier` and `accounts.plan_expires_at` and join on `accounts.id`; keep the names.
Timestamps are UTC-naive.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

accounts = sa.Table(
    "accounts",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("tier", sa.String(32), nullable=False, server_default="basic"),
    sa.Column("plan_expires_at", sa.DateTime(), nullable=True),
    sa.Column("created_at", sa.DateTime(), nullable=False),
    # The admins' overview counts plans active and expiring, and users by tier, from these (counts.py).
    sa.Index("ix_accounts_plan_expires_at", "plan_expires_at"),
    sa.Index("ix_accounts_tier", "tier"),
)

users = sa.Table(
    "users",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("account_id", Id, sa.ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("name", sa.String(200), nullable=False),
    # Both hold exactly `inputs.login_key`'s normal form and compare byte for byte, without trailing-space
    # padding, on every database (migration auth_keys_0002): no other spelling can match.
    sa.Column("email", sa.String(254), nullable=False, unique=True),
    sa.Column("phone", sa.String(20), nullable=False, unique=True),
    sa.Column("password_hash", sa.String(255), nullable=False),
    sa.Column("role", sa.String(16), nullable=False, server_default="user"),
    sa.Column("locale", sa.String(8), nullable=False, server_default="ar"),
    sa.Column("created_at", sa.DateTime(), nullable=False),
    sa.Column("password_changed_at", sa.DateTime(), nullable=True),
    # Set by an admin's ban: no login, no session, none of the user's keys answer while it is set.
    sa.Column("banned_at", sa.DateTime(), nullable=True),
    sa.Index("ix_users_created_at", "created_at"),
)

# `id` is the SHA-256 of the cookie value, so a copy of the table does not hand out live sessions.
sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("user_id", Id, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("created_at", sa.DateTime(), nullable=False),
    sa.Column("last_seen_at", sa.DateTime(), nullable=False),
    sa.Column("expires_at", sa.DateTime(), nullable=False),
    sa.Column("ip", sa.String(45), nullable=True),
    sa.Column("user_agent", sa.String(255), nullable=True),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("account_id", Id, sa.ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("user_id", Id, sa.ForeignKey("users.id", ondelete="SET NULL"), nullable=True, index=True),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("prefix", sa.String(16), nullable=False),
    sa.Column("secret_hash", sa.String(64), nullable=False, unique=True),
    # Comma-separated, sorted: "read,write".
    sa.Column("scopes", sa.String(64), nullable=False),
    sa.Column("created_at", sa.DateTime(), nullable=False),
    sa.Column("expires_at", sa.DateTime(), nullable=True),
    sa.Column("last_used_at", sa.DateTime(), nullable=True),
    sa.Column("revoked_at", sa.DateTime(), nullable=True),
    # The key's spend limit in milli-credits per `limit_period` (day, month, total); both NULL: no limit.
    sa.Column("limit_milli", sa.BigInteger(), nullable=True),
    sa.Column("limit_period", sa.String(8), nullable=True),
)
