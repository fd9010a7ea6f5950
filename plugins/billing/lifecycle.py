"""Billing's events after the sale: what reconciliation finds wrong (`billing.mismatch`, for the admins),
a plan about to end (`subscription.renewal_due`, for its owner) and a plan that ended
(`subscription.expired`). Published through the core's outbox, in the transaction that records them.

`plan_expires_at` is the value the accounts table holds (UTC, whole seconds), so an event and every view
of the account (the portal, `GET /api/admin/accounts`, the tiers plugin's check) name the same instant.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar

from edge.events import Event
from plugins.billing.order_rows import Row


@dataclass(frozen=True, kw_only=True)
class BillingMismatch(Event):
    """An order whose state here disagrees with MyFatoorah's: `paid_not_credited` (MyFatoorah says paid,
    the order is not) or `credited_not_paid` (the order is paid here, MyFatoorah does not say so), found
    by reconciliation; or `paid_twice` (the invoice has more than one successful transaction:
    `provider_fils` were taken in all, the order was credited once), found when a payment is confirmed
    (once per total) and by reconciliation. Nothing was changed; an admin has to look."""

    event_name: ClassVar[str] = "billing.mismatch"
    kind: str
    account_id: int
    order_id: str
    product: str
    amount_fils: int
    currency: str
    invoice_id: str
    order_status: str
    provider_status: str
    provider_fils: int | None


def mismatch(order: Row, kind: str, *, provider: str, fils: int | None) -> BillingMismatch:
    return BillingMismatch(
        kind=kind,
        account_id=int(order.account_id),
        order_id=str(order.reference),
        product=str(order.product_id),
        amount_fils=int(order.price_fils),
        currency=str(order.currency),
        invoice_id=str(order.invoice_id),
        order_status=str(order.status),
        provider_status=provider,
        provider_fils=fils,
    )


@dataclass(frozen=True, kw_only=True)
class PlanNotice(Event):
    """Whose plan, which, and until when; who to tell (the account's owner) in which language."""

    account_id: int
    user_id: int | None
    locale: str
    phone: str | None
    tier: str
    plan_expires_at: datetime


@dataclass(frozen=True, kw_only=True)
class SubscriptionRenewalDue(PlanNotice):
    """The plan ends within the reminder window: renew by buying `product` again (once per expiry)."""

    event_name: ClassVar[str] = "subscription.renewal_due"
    product: str | None
    days_left: int


@dataclass(frozen=True, kw_only=True)
class SubscriptionExpired(PlanNotice):
    """The plan ended unrenewed: the account is now on `fallback_tier`, with no expiry (once per expiry)."""

    event_name: ClassVar[str] = "subscription.expired"
    fallback_tier: str


LIFECYCLE_EVENTS: tuple[type[Event], ...] = (BillingMismatch, SubscriptionRenewalDue, SubscriptionExpired)
