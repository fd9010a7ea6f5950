"""The billing schema: orders, the per-year receipt counter, and the webhooks already taken.

Account and user ids come from plugins/auth_keys' tables; they are plain indexed columns here, so the
billing migrations do not depend on that plugin's. What the constraints guarantee, whichever worker or
host writes:
- `billing_orders.reference` (ours, sent to MyFatoorah as CustomerReference) and `invoice_id`
  (MyFatoorah's) each name at most one order, so a status answer or a webhook maps to one order only;
- `receipt_number` is unique, and taken from `billing_receipt_counters` in the transaction that marks the
  order paid: a rollback gives the number back, so receipts of a year have no gaps;
- `billing_webhooks.replay_key` (and v2's `reference`) are unique: one signed event is acted on once.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

metadata = sa.MetaData()

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Moment = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql")

orders = sa.Table(
    "billing_orders",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("reference", sa.String(40), nullable=False, unique=True),
    sa.Column("account_id", sa.BigInteger(), nullable=False),
    sa.Column("user_id", sa.BigInteger(), nullable=True),
    sa.Column("product_id", sa.String(32), nullable=False),
    sa.Column("kind", sa.String(8), nullable=False),
    sa.Column("tier", sa.String(32), nullable=True),
    sa.Column("credits", sa.BigInteger(), nullable=False),
    sa.Column("price_fils", sa.BigInteger(), nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    # pending | paid | failed | expired | disputed (plugins/billing/rules.py)
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("invoice_id", sa.String(32), nullable=True, unique=True),
    sa.Column("payment_id", sa.String(64), nullable=True),
    sa.Column("payment_url", sa.String(1000), nullable=True),
    sa.Column("method", sa.String(64), nullable=True),
    sa.Column("locale", sa.String(2), nullable=False),
    sa.Column("label_ar", sa.String(64), nullable=False),
    sa.Column("label_en", sa.String(64), nullable=False),
    sa.Column("buyer_name", sa.String(200), nullable=True),
    sa.Column("buyer_email", sa.String(320), nullable=True),
    sa.Column("created_at", Moment, nullable=False),
    sa.Column("expires_at", Moment, nullable=False),
    sa.Column("paid_at", Moment, nullable=True),
    # When the pending-order job asks MyFatoorah next, and how often it has asked.
    sa.Column("next_check_at", Moment, nullable=True),
    sa.Column("check_attempts", sa.Integer(), nullable=False, server_default="0"),
    # When the payer's return (an unauthenticated URL) last made the gateway ask MyFatoorah: at most once
    # per `callback_check_seconds`, so reloading it cannot spend the GetPaymentStatus rate limit.
    sa.Column("callback_asked_at", Moment, nullable=True),
    sa.Column("receipt_number", sa.String(24), nullable=True, unique=True),
    # A plan's new expiry, as set when it was paid.
    sa.Column("plan_expires_at", Moment, nullable=True),
    # What MyFatoorah confirmed (fils, currency) when it differed from the order: why it is disputed, or,
    # on a paid order, the total its invoice took when paid more than once (reported once per total).
    sa.Column("confirmed_fils", sa.BigInteger(), nullable=True),
    sa.Column("confirmed_currency", sa.String(8), nullable=True),
    sa.Column("updated_at", Moment, nullable=False),
    sa.Index("ix_billing_orders_account", "account_id", "id"),
    sa.Index("ix_billing_orders_due", "status", "next_check_at"),
    # Revenue of a month (service.py): the paid orders, in a range of paid_at.
    sa.Index("ix_billing_orders_paid", "status", "paid_at"),
)

# One row per calendar year: the last receipt number given.
receipt_counters = sa.Table(
    "billing_receipt_counters",
    metadata,
    sa.Column("year", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("last", sa.BigInteger(), nullable=False),
)

webhooks = sa.Table(
    "billing_webhooks",
    metadata,
    sa.Column("replay_key", sa.String(64), primary_key=True),
    sa.Column("reference", sa.String(100), nullable=True, unique=True),
    sa.Column("version", sa.String(2), nullable=False),
    sa.Column("code", sa.Integer(), nullable=False),
    sa.Column("invoice_id", sa.String(32), nullable=True),
    sa.Column("received_at", Moment, nullable=False, index=True),
)

# Refunds an admin asked for (plugins/billing/refunds.py). `key` makes a repeated request (a double click)
# find the first one; MyFatoorah's refund id names at most one refund; a refund in `requesting` is the one
# MakeRefund call of its order in flight (the order's row lock decides who may start one).
refunds = sa.Table(
    "billing_refunds",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("key", sa.String(64), nullable=False, unique=True),
    sa.Column("order_reference", sa.String(40), nullable=False),
    sa.Column("account_id", sa.BigInteger(), nullable=False),
    sa.Column("amount_fils", sa.BigInteger(), nullable=False),
    # requesting | pending | refunded | rejected | failed | unconfirmed (plugins/billing/refunds.py)
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("provider_refund_id", sa.String(32), nullable=True, unique=True),
    sa.Column("credits_taken_milli", sa.BigInteger(), nullable=False, server_default="0"),
    sa.Column("reason", sa.String(500), nullable=False),
    sa.Column("actor_user_id", sa.BigInteger(), nullable=True),
    sa.Column("created_at", Moment, nullable=False),
    sa.Column("updated_at", Moment, nullable=False),
    sa.Index("ix_billing_refunds_order", "order_reference", "id"),
)

# One row per (account, plan expiry, kind) a renewal reminder or an expiry was announced for
# (plugins/billing/renewals.py): the key that makes each announcement happen once, however often the job
# runs. `plan_expires_at` has the accounts table's own type, so it equals the value read from there.
plan_notices = sa.Table(
    "billing_plan_notices",
    metadata,
    sa.Column("account_id", sa.BigInteger(), primary_key=True, autoincrement=False),
    sa.Column("plan_expires_at", sa.DateTime(), primary_key=True),
    sa.Column("kind", sa.String(16), primary_key=True),
    sa.Column("created_at", Moment, nullable=False),
)
