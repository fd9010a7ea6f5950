"""The credits schema: balances, the append-only ledger, live holds and per-request usage.

Account ids come from plugins/auth_keys' `accounts` table; they are plain indexed columns here, so the
ledger does not depend on that plugin's migrations.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# One row per account that has ever held credits: the running balance and what live holds take from it.
balances = sa.Table(
    "credit_balances",
    metadata,
    sa.Column("account_id", sa.BigInteger(), primary_key=True, autoincrement=False),
    sa.Column("balance_milli", sa.BigInteger(), nullable=False, server_default="0"),
    sa.Column("reserved_milli", sa.BigInteger(), nullable=False, server_default="0"),
    # The tier last seen on a request: decides the plan size for the low-credit warning.
    sa.Column("tier", sa.String(32), nullable=True),
    sa.Column("low_notified", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("exhausted_notified", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("updated_at", sa.DateTime(), nullable=False),
)

# Append-only: a balance always equals the sum of its rows. (kind, reference) makes every write idempotent.
ledger = sa.Table(
    "credit_ledger",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("account_id", sa.BigInteger(), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("amount_milli", sa.BigInteger(), nullable=False),
    sa.Column("balance_after_milli", sa.BigInteger(), nullable=False),
    sa.Column("reference", sa.String(160), nullable=False),
    sa.Column("actor", sa.String(64), nullable=True),
    sa.Column("reason", sa.String(500), nullable=True),
    sa.Column("created_at", sa.DateTime(), nullable=False),
    sa.UniqueConstraint("kind", "reference", name="uq_credit_ledger_kind_reference"),
    sa.Index("ix_credit_ledger_account_id", "account_id", "id"),
)

# The worst case of a request in flight. Settling deletes the row; the sweeper deletes expired ones.
holds = sa.Table(
    "credit_holds",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("account_id", sa.BigInteger(), nullable=False, index=True),
    sa.Column("request_id", sa.String(128), nullable=False),
    sa.Column("amount_milli", sa.BigInteger(), nullable=False),
    sa.Column("created_at", sa.DateTime(), nullable=False),
    sa.Column("expires_at", sa.DateTime(), nullable=False, index=True),
)

# One row per limited scope and period (plugins/credits/scopes.py): what it spent and what its live holds take.
# A hold of a limited request is taken only while spent + reserved + the hold stays within the limit.
spend_scopes = sa.Table(
    "credit_spend_scopes",
    metadata,
    sa.Column("kind", sa.String(16), primary_key=True),
    sa.Column("scope_id", sa.BigInteger(), primary_key=True, autoincrement=False),
    sa.Column("period", sa.String(8), primary_key=True),
    # The period's first local day (settings.timezone); 1970-01-01 for `total`.
    sa.Column("period_start", sa.Date(), primary_key=True),
    sa.Column("spent_milli", sa.BigInteger(), nullable=False, server_default="0"),
    sa.Column("reserved_milli", sa.BigInteger(), nullable=False, server_default="0"),
    sa.Column("updated_at", sa.DateTime(), nullable=False),
)

# Which scope rows a live hold counts against, and for how much: settling or releasing the hold gives it back.
scope_holds = sa.Table(
    "credit_scope_holds",
    metadata,
    sa.Column("hold_id", sa.String(32), primary_key=True),
    sa.Column("kind", sa.String(16), primary_key=True),
    sa.Column("scope_id", sa.BigInteger(), nullable=False),
    sa.Column("period", sa.String(8), nullable=False),
    sa.Column("period_start", sa.Date(), nullable=False),
    sa.Column("amount_milli", sa.BigInteger(), nullable=False),
)

# One row per settled hold. `charge_id` is the hold's id, so settling twice cannot write two rows even
# when a client reuses its own x-request-id.
usage = sa.Table(
    "usage_records",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("charge_id", sa.String(32), nullable=False, unique=True),
    sa.Column("request_id", sa.String(128), nullable=False, index=True),
    sa.Column("account_id", sa.BigInteger(), nullable=False),
    sa.Column("user_id", sa.BigInteger(), nullable=True),
    sa.Column("key_id", sa.BigInteger(), nullable=True),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("endpoint", sa.String(32), nullable=False),
    sa.Column("route", sa.String(16), nullable=False),
    sa.Column("upstream", sa.String(64), nullable=True),
    sa.Column("stream", sa.Boolean(), nullable=False),
    sa.Column("prompt_tokens", sa.Integer(), nullable=False),
    sa.Column("completion_tokens", sa.Integer(), nullable=False),
    sa.Column("usage_source", sa.String(16), nullable=False),
    sa.Column("multiplier", sa.Integer(), nullable=False),
    sa.Column("cost_milli", sa.BigInteger(), nullable=False),
    sa.Column("status", sa.Integer(), nullable=False),
    sa.Column("outcome", sa.String(32), nullable=False),
    sa.Column("latency_ms", sa.Integer(), nullable=True),
    sa.Column("ttft_ms", sa.Integer(), nullable=True),
    # The local calendar day (settings.timezone) the request ended on: the chart groups by it.
    sa.Column("day", sa.Date(), nullable=False),
    sa.Column("created_at", sa.DateTime(), nullable=False),
    sa.Index("ix_usage_records_account_id", "account_id", "id"),
    sa.Index("ix_usage_records_account_day", "account_id", "day"),
    # One member's rows of a team's account, newest first (GET /api/team/usage/mine): credits_0005.
    sa.Index("ix_usage_records_account_user", "account_id", "user_id", "id"),
)
# The usage row as its account sees it, in the CSV export's column order (the API's items add `id`): when
# and which request first, whose key and user last, the rest in the table's order. Its bookkeeping columns
# (the id, the hold it settled, the account, the day the chart groups by) are not shown.
_BOOKKEEPING, _FIRST, _LAST = (
    ("id", "charge_id", "account_id", "day"),
    ("created_at", "request_id"),
    ("key_id", "user_id"),
)
USAGE_SHOWN = (*_FIRST, *(c.name for c in usage.columns if c.name not in (*_BOOKKEEPING, *_FIRST, *_LAST)), *_LAST)

# The roll-ups (plugins/credits/rollups.py): what the admins' overview reads instead of usage_records, written
# in the transaction of every usage row. A day is the usage row's own `day` (settings.timezone).
# Per day, model and route, in SHARDS rows by account (account_id % SHARDS), so concurrent settlements of
# different accounts rarely wait for the same row.
usage_daily = sa.Table(
    "usage_daily",
    metadata,
    sa.Column("day", sa.Date(), primary_key=True),
    sa.Column("model", sa.String(200), primary_key=True),
    sa.Column("route", sa.String(16), primary_key=True),
    sa.Column("shard", sa.SmallInteger(), primary_key=True, autoincrement=False),
    sa.Column("requests", sa.BigInteger(), nullable=False),
    sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
    sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
    sa.Column("charged_milli", sa.BigInteger(), nullable=False),
)
# Per account and calendar month (`month`: its first day): the top accounts.
usage_monthly = sa.Table(
    "usage_monthly",
    metadata,
    sa.Column("month", sa.Date(), primary_key=True),
    sa.Column("account_id", sa.BigInteger(), primary_key=True, autoincrement=False),
    sa.Column("requests", sa.BigInteger(), nullable=False),
    sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
    sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
    sa.Column("charged_milli", sa.BigInteger(), nullable=False),
)
