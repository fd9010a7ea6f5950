"""The billing service (`edge.services.Billing`): what other plugins (the admins' pages) read of orders."""

from __future__ import annotations

from dataclasses import fields
from datetime import datetime

import sqlalchemy as sa

from edge.db import Database
from edge.services import OrderSummary, Revenue
from plugins.billing.money import CURRENCY
from plugins.billing.tables import orders, refunds


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

    async def revenue(self, *, since: datetime, until: datetime) -> Revenue:
        o, r = orders.c, refunds.c
        paid = sa.and_(o.paid_at >= since, o.paid_at < until, o.status == "paid")
        refunded = (
            sa.select(sa.func.coalesce(sa.func.sum(r.amount_fils), 0))
            .where(r.created_at >= since, r.created_at < until, r.status == "refunded")
            .scalar_subquery()
        )
        query = sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(o.price_fils), 0), refunded).where(paid)
        async with self.db.connect() as conn:
            count, fils, back = (await conn.execute(query)).one()
        return Revenue(
            since=since,
            until=until,
            currency=CURRENCY,
            paid_orders=int(count),
            paid_fils=int(fils),
            refunded_fils=int(back or 0),
        )
