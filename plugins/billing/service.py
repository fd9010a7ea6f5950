"""The billing service (`edge.services.Billing`): what other plugins (the admins' user page) read of orders."""

from __future__ import annotations

import sqlalchemy as sa

from edge.db import Database
from edge.services import OrderSummary
from plugins.billing.tables import orders


class BillingService:
    """Implements `edge.services.Billing` over the orders table."""

    def __init__(self, *, database: Database) -> None:
        self.db = database

    async def orders(self, *, account_id: int, limit: int = 50) -> list[OrderSummary]:
        query = (
            sa.select(
                orders.c.reference,
                orders.c.product_id,
                orders.c.status,
                orders.c.price_fils,
                orders.c.currency,
                orders.c.created_at,
                orders.c.paid_at,
            )
            .where(orders.c.account_id == account_id)
            .order_by(orders.c.id.desc())
            .limit(max(1, limit))
        )
        async with self.db.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [
            OrderSummary(
                reference=r.reference,
                product_id=r.product_id,
                status=r.status,
                price_fils=int(r.price_fils),
                currency=r.currency,
                created_at=r.created_at,
                paid_at=r.paid_at,
            )
            for r in rows
        ]
