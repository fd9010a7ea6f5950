"""Billing's three events as notify receives them, defined by the test (same names and fields as billing's),
so notify's tests do not depend on the billing plugin. Register with `serve(..., plugins=[BillingEvents()])`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar

from edge.events import Event
from edge.hookspecs import hookimpl


@dataclass(frozen=True, kw_only=True)
class PaidOrder(Event):
    account_id: int
    user_id: int | None
    locale: str
    phone: str | None
    order_id: str
    product: str
    amount_fils: int
    currency: str
    credits_milli: int
    balance_milli: int
    receipt_number: str


@dataclass(frozen=True, kw_only=True)
class TopupPaid(PaidOrder):
    event_name: ClassVar[str] = "topup.paid"


@dataclass(frozen=True, kw_only=True)
class SubscriptionActivated(PaidOrder):
    event_name: ClassVar[str] = "subscription.activated"
    tier: str
    plan_expires_at: datetime


@dataclass(frozen=True, kw_only=True)
class SubscriptionRenewalDue(Event):
    event_name: ClassVar[str] = "subscription.renewal_due"
    account_id: int
    user_id: int | None
    locale: str
    phone: str | None
    tier: str
    plan_expires_at: datetime
    product: str | None
    days_left: int


class BillingEvents:
    """Registers the three event types, as the billing plugin will."""

    name = "billing_events_test"

    @hookimpl
    def resayil_event_types(self) -> list[type[Event]]:
        return [TopupPaid, SubscriptionActivated, SubscriptionRenewalDue]
