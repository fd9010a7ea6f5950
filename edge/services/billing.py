"""The billing service, owned by billing: orders as an admin's user page shows them, and revenue."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from edge.services.keys import Service


@dataclass(frozen=True, slots=True)
class OrderSummary:
    """One order as an admin's user page shows it: our reference, never the row number; fils, not floats."""

    reference: str
    product_id: str
    status: str
    price_fils: int
    currency: str
    created_at: datetime
    paid_at: datetime | None


@dataclass(frozen=True, slots=True)
class Revenue:
    """Orders paid in [since, until) (UTC): how many and their price in fils, and the refunds asked for in it
    that count against what was paid (all but those that certainly did not happen, as /api/admin/revenue
    counts them); net = paid - refunded."""

    since: datetime
    until: datetime
    currency: str
    paid_orders: int
    paid_fils: int
    refunded_fils: int


class Billing(Protocol):
    async def orders(self, *, account_id: int, limit: int = 50) -> list[OrderSummary]:
        """The account's last `limit` orders, newest first."""
        ...

    async def revenue(self, *, bounds: Sequence[datetime]) -> list[Revenue]:
        """What was paid (and refunded) in each period between consecutive `bounds` (UTC, never descending: n
        bounds make n - 1 periods), in one statement over the orders' indexed (status, `paid_at`)."""
        ...


BILLING: Service[Billing] = Service("billing")
