"""The billing service, owned by billing: orders as an admin's user page shows them."""

from __future__ import annotations

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


class Billing(Protocol):
    async def orders(self, *, account_id: int, limit: int = 50) -> list[OrderSummary]:
        """The account's last `limit` orders, newest first."""
        ...


BILLING: Service[Billing] = Service("billing")
