"""Billing's domain events, published through the core's outbox in the transaction that credits (or
disputes) an order, so an event exists exactly when what it announces was committed.

Consumers (the notify plugin's WhatsApp messages, the admins' alerts) get who to tell and in which
language with each event, and de-duplicate on `event.id`. Money is integer fils and milli-credits.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar

from edge.events import Event


@dataclass(frozen=True, kw_only=True)
class OrderEvent(Event):
    """Whose order, what it was, and what it cost."""

    account_id: int
    user_id: int | None
    locale: str
    phone: str | None
    order_id: str
    product: str
    amount_fils: int
    currency: str


@dataclass(frozen=True, kw_only=True)
class PaidOrder(OrderEvent):
    credits_milli: int
    balance_milli: int
    receipt_number: str


@dataclass(frozen=True, kw_only=True)
class TopupPaid(PaidOrder):
    """A credit pack was paid and its credits added (once per order)."""

    event_name: ClassVar[str] = "topup.paid"


@dataclass(frozen=True, kw_only=True)
class SubscriptionActivated(PaidOrder):
    """A plan was paid: the account is on `tier` until `plan_expires_at` (UTC) and got its monthly credits."""

    event_name: ClassVar[str] = "subscription.activated"
    tier: str
    plan_expires_at: datetime


@dataclass(frozen=True, kw_only=True)
class BillingDisputed(OrderEvent):
    """MyFatoorah confirmed a payment that does not match the order (amount or currency): nothing was
    credited; an admin has to look."""

    event_name: ClassVar[str] = "billing.disputed"
    confirmed_fils: int
    confirmed_currency: str | None
    invoice_id: str


BILLING_EVENTS: tuple[type[Event], ...] = (TopupPaid, SubscriptionActivated, BillingDisputed)
