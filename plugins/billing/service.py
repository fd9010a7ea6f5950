"""The billing service (`edge.services.Billing`): what other plugins (the admins' pages) read of orders."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from dataclasses import fields
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from edge.db import Database
from edge.services import OrderSummary, Revenue
from plugins.billing.money import CURRENCY
from plugins.billing.refunds import COUNTED
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

    async def revenue(self, *, bounds: Sequence[datetime]) -> list[Revenue]:
        periods = list(itertools.pairwise(bounds))
        if not periods or any(since > until for since, until in periods):
            raise ValueError("bounds must be at least two instants, ascending")
        params = {f"b_{i}": moment for i, moment in enumerate(bounds)}
        async with self.db.connect() as conn:
            values = [int(v or 0) for v in (await conn.execute(_revenue(len(periods)), params)).one()]
        return [
            Revenue(
                since=since,
                until=until,
                currency=CURRENCY,
                paid_orders=values[3 * i],
                paid_fils=values[3 * i + 1],
                refunded_fils=values[3 * i + 2],
            )
            for i, (since, until) in enumerate(periods)
        ]


@functools.cache
def _revenue(periods: int) -> sa.Select[Any]:
    """Paid orders (count, fils) and refunds asked for (fils; those counted against what was paid, as
    /api/admin/revenue counts them) in each of `periods` periods between the bound
    parameters b_0 < b_1 < ...: built once per number of periods, as building it per call cost more than
    running it."""
    o, r = orders.c, refunds.c
    bounds = [sa.bindparam(f"b_{i}", type_=o.paid_at.type) for i in range(periods + 1)]
    columns: list[Any] = []
    for since, until in itertools.pairwise(bounds):
        paid = sa.and_(o.paid_at >= since, o.paid_at < until)
        columns += [
            sa.func.count(sa.case((paid, 1))),
            sa.cast(sa.func.coalesce(sa.func.sum(sa.case((paid, o.price_fils), else_=0)), 0), sa.BigInteger()),
            sa.select(sa.cast(sa.func.coalesce(sa.func.sum(r.amount_fils), 0), sa.BigInteger()))
            .where(r.created_at >= since, r.created_at < until, r.status.in_(COUNTED))
            .scalar_subquery(),
        ]
    return sa.select(*columns).where(o.status == "paid", o.paid_at >= bounds[0], o.paid_at < bounds[-1])
