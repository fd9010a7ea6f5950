"""The notify schema: the WhatsApp outbox (one row per message and recipient) and users' opt-outs.

`dedup_key` is unique: whatever turns an event into rows (a re-delivered event, two workers, a replayed
job) inserts the same keys, so a message exists once and is sent once. Timestamps are UTC-naive.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

metadata = sa.MetaData()

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Moment = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql")

STATUSES = ("queued", "sending", "sent", "delivered", "failed", "retrying", "not_configured")

notify_outbox = sa.Table(
    "notify_outbox",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("dedup_key", sa.String(160), nullable=False, unique=True),
    sa.Column("event_name", sa.String(64), nullable=False),
    sa.Column("event_id", sa.String(32), nullable=False),
    # `user` (the account's owner) or `admin`.
    sa.Column("audience", sa.String(8), nullable=False),
    sa.Column("recipient", sa.String(20), nullable=False),
    sa.Column("language", sa.String(2), nullable=False),
    # The whole text for free-text providers; the recipient's language's template parameters (a JSON list)
    # for template providers.
    sa.Column("body", sa.Text(), nullable=False),
    sa.Column("params", sa.Text(), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("provider", sa.String(16), nullable=True),
    sa.Column("provider_message_id", sa.String(256), nullable=True),
    sa.Column("last_error", sa.String(64), nullable=True),
    sa.Column("next_attempt_at", Moment, nullable=False),
    # While `sending`: the sender's claim, which another sender may take over once it has passed.
    sa.Column("claimed_until", Moment, nullable=True),
    # The `dedup_key` of a message to the same recipient that must be done (no longer queued, retrying or
    # sending) before this one is tried: a template provider's second language after the first.
    sa.Column("after_key", sa.String(160), nullable=True),
    sa.Column("last_attempt_at", Moment, nullable=True),
    sa.Column("created_at", Moment, nullable=False),
    sa.Column("updated_at", Moment, nullable=False),
    # The sender's question: what is due.
    sa.Index("ix_notify_outbox_due", "status", "next_attempt_at"),
    # The pacing question (when did this recipient last get a message) and the admin filter.
    sa.Index("ix_notify_outbox_recipient", "recipient", "last_attempt_at"),
    # The Cloud API's status webhooks name a message by the id its send was answered with.
    sa.Index("ix_notify_outbox_message_id", "provider_message_id"),
)

# A row exists only once a user changed a default; both notices are on by default.
notify_preferences = sa.Table(
    "notify_preferences",
    metadata,
    sa.Column("user_id", sa.BigInteger(), primary_key=True, autoincrement=False),
    sa.Column("credits_low", sa.Boolean(), nullable=False, server_default=sa.true()),
    sa.Column("renewal_due", sa.Boolean(), nullable=False, server_default=sa.true()),
    sa.Column("updated_at", sa.DateTime(), nullable=False),
)
