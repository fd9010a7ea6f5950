"""The billing service (`edge.services.Billing`): what other plugins (the admins' user page) read of orders."""

from __future__ import annotations

from dataclasses import fields

import sqlalchemy as sa

from edge.db import Database
from edge.services import OrderSummary
from plugins.billing.tables import orders


class BillingService:
    """Implements `edge.services.Billing` over the orders table."""

    def __init__(self, *, database: Database) -> None:
        self.db = database

    async def orders(self, *, account_id: int, limit: int = 50) -> list[OrderSummary]:
        columns = [orders.c[f.name] for f in fields(OrderSummary)]
        query = sa.select(*columns).where(orders.c.account_id == account_id)
        async with self.db.connect() as conn:
            rows = (await conn.execute(query.order_by(orders.c.id.desc()).limit(max(1, limit)))).all()
        return [OrderSummary(**row._mapping) for row in rows]
