"""Shared by the billing admin tests: an admin's calls, a paid order, and the audit trail."""

from __future__ import annotations

from typing import Any

import orjson
import sqlalchemy as sa

from edge.audit import audit_log
from tests.fakes.myfatoorah import FakeMyFatoorah
from tests.support.billing import checkout, pay
from tests.support.portal import LoggedIn


async def call(
    served: Any, method: str, path: str, user: LoggedIn | None, body: Any = None, **headers: str
) -> tuple[int, dict[str, Any]]:
    """(status, JSON body) of an /api call as `user` (None: no session)."""
    sent = {**(user.headers if user is not None else {}), **headers}
    async with served.request(method, path, json=body, headers=sent) as resp:
        return resp.status, await resp.json()


async def paid_order(served: Any, fake: FakeMyFatoorah, user: LoggedIn, product: str) -> dict[str, Any]:
    """An order of `product` checked out and paid through the fake's page."""
    order = await checkout(served, user, product)
    assert (await pay(served, fake, order))[1]["result"] == "paid"
    return order


async def audit_rows(served: Any, target: str | None = None) -> list[dict[str, Any]]:
    query = sa.select(audit_log).order_by(audit_log.c.id)
    if target is not None:
        query = query.where(audit_log.c.target == target)
    async with served.gateway.database.connect() as conn:
        rows = (await conn.execute(query)).all()
    return [dict(row._mapping) | {"details": orjson.loads(row.details)} for row in rows]
