"""The order's state machine and the plan's calendar, as pure rules: no I/O, integer money.

    pending ──paid──> paid            (the only way credits are added: crediting.py)
       │  └─mismatch─> disputed        (never credits; an admin decides)
       ├──failed──> failed ──paid/mismatch──> ...   (the payer may try again on the same invoice; the
       │                                              job asks until the order's expiry)
       └──expired─> expired ─paid/mismatch──> ...   (money that arrived late is still credited)

A paid order is never downgraded: no later FAILED, CANCELED or expiry changes it, and a disputed order
never credits. `verdict` decides from what MyFatoorah confirmed (GetPaymentStatus), never from a
redirect's or a webhook's own words.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from plugins.billing.gateway_client import PaymentStatus
from plugins.billing.money import CURRENCY

Status = Literal["pending", "paid", "failed", "expired", "disputed"]
STATUSES: tuple[Status, ...] = ("pending", "paid", "failed", "expired", "disputed")
# The states a confirmed payment may still credit (or dispute).
CREDITABLE: frozenset[str] = frozenset({"pending", "failed", "expired"})
# The only moves away from each state (besides to paid/disputed from CREDITABLE).
_MOVES: dict[str, frozenset[str]] = {
    "pending": frozenset({"paid", "failed", "expired", "disputed"}),
    "failed": frozenset({"paid", "disputed"}),
    "expired": frozenset({"paid", "disputed"}),
    "paid": frozenset(),
    "disputed": frozenset(),
}

Verdict = Literal["paid", "mismatch", "failed", "pending", "foreign"]


def may_move(current: str, new: str) -> bool:
    """Whether an order in `current` may become `new`; a paid or disputed order stays as it is."""
    return new in _MOVES.get(current, frozenset())


@dataclass(frozen=True, slots=True)
class Expected:
    """What an order says was to be paid, to hold MyFatoorah's confirmation against."""

    reference: str
    invoice_id: str | None
    price_fils: int
    currency: str


def verdict(order: Expected, status: PaymentStatus) -> Verdict:
    """What a confirmed status means for the order.

    `foreign`: the answer is about another invoice or another order (a callback or webhook naming a
    payment of someone else's order), so it changes nothing. `paid`: the invoice is Paid with a
    successful transaction, for exactly the order's fils in KWD. `mismatch`: paid, but for another amount
    or currency. `failed`: no successful or in-progress transaction, and at least one failed one, or the
    invoice was canceled. `pending`: anything else (ask again later)."""
    if status.invoice_id != order.invoice_id or status.reference != order.reference:
        return "foreign"
    paid = status.paid
    if status.status == "paid" and paid is not None:
        amounts = {status.amount_fils} | ({paid.amount_fils} if paid.amount_fils is not None else set())
        if amounts != {order.price_fils} or status.currency != order.currency or order.currency != CURRENCY:
            return "mismatch"
        return "paid"
    if status.status == "canceled":
        return "failed"
    states = {t.status for t in status.transactions}
    if "failed" in states and not states & {"in_progress", "success"}:
        return "failed"
    return "pending"


def confirmed_amount(status: PaymentStatus) -> int:
    """The fils MyFatoorah says were paid: the successful transaction's, else the invoice's."""
    paid = status.paid
    return paid.amount_fils if paid is not None and paid.amount_fils is not None else status.amount_fils


def paid_twice(status: PaymentStatus) -> int | None:
    """The fils paid in all when the invoice has more than one successful transaction (the payer paid it
    twice, say from two tabs), else None. The order is credited once; the surplus is for an admin."""
    paid = [t for t in status.transactions if t.status == "success"]
    if len(paid) < 2:
        return None
    return sum(t.amount_fils if t.amount_fils is not None else status.amount_fils for t in paid)


def plan_expiry(*, current_tier: str, current_expiry: datetime | None, tier: str, now: datetime, days: int) -> datetime:
    """When a newly paid plan ends. Renewing the plan the account is on extends from its current expiry
    while that is still ahead (paying early loses no days); a different plan, or an expired one, starts now.
    An account on its plan with no expiry (set by an admin: never expires) starts now too."""
    period = timedelta(days=days)
    if tier == current_tier and current_expiry is not None and current_expiry > now:
        return current_expiry + period
    # Whole seconds: the accounts table keeps no fraction on MariaDB, and the event must name its value.
    return now.replace(microsecond=0) + period


def next_check(*, attempts: int, now: datetime, first_seconds: float, max_seconds: float) -> datetime:
    """When to ask MyFatoorah again about a pending order after `attempts` asks: doubling, capped."""
    delay = min(first_seconds * 2 ** min(max(attempts - 1, 0), 30), max_seconds)
    return now + timedelta(seconds=delay)


def receipt_number(*, year: int, number: int) -> str:
    """R-2026-000042: sequential per calendar year (UTC), six digits and more when a year needs them."""
    return f"R-{year}-{number:06d}"
