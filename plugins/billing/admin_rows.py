"""The admins' reads of orders: a filtered page of them, and paid totals by product and by day.

Filters arrive as query text and are checked here into the one 422 (edge/inputs.py) before any query:
a status outside the state machine, a product id no product could have, an account or cursor that is not
a whole number in range, an instant that is not ISO 8601, or `from` after `to`. Days for revenue are the
seller's calendar days (the config's `timezone`), from `from` to `to` inclusive, at most MAX_DAYS.
"""

from __future__ import annotations

import re
import zoneinfo
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import sqlalchemy as sa

from edge.db import Database
from edge.inputs import FieldError, Form, instant, query_form, query_number, query_page, query_value
from plugins.billing.order_rows import Row
from plugins.billing.refunds import COUNTED
from plugins.billing.rules import STATUSES
from plugins.billing.tables import orders, refunds

MAX_PAGE = 100
MAX_DAYS = 366
BIGINT_MAX = 2**63 - 1
EARLIEST = datetime(2000, 1, 1)
LATEST = datetime(9999, 12, 31, 23, 59, 59)
_PRODUCT = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
_DAY = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
FILTERS = ("status", "product", "account", "from", "to", "limit", "cursor")


@dataclass(frozen=True, slots=True)
class OrderFilter:
    status: str | None = None
    product: str | None = None
    account: int | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 50
    cursor: int | None = None


def order_filter(query: Mapping[str, str], *, repeated: set[str]) -> OrderFilter:
    """The filter a query string asks for, or the one 422 naming every bad parameter."""
    form = query_form(query, allowed=FILTERS, repeated=repeated)
    status = query_value(query, "status")
    if status is not None and status not in STATUSES:
        form.fail("status", FieldError("status_invalid", f"`status` must be one of: {', '.join(STATUSES)}."))
    product = query_value(query, "product")
    if product is not None and not _PRODUCT.match(product):
        form.fail("product", FieldError("product_invalid", "`product` must be a product id."))
    account = None
    if (raw := query_value(query, "account")) is not None:
        account = query_number(raw, top=BIGINT_MAX)
        if not account:
            form.fail("account", FieldError("account_invalid", "`account` must be an account id."))
    cursor, limit = query_page(form, query, max_page=MAX_PAGE)
    since = form.take("from", instant(subject="from", earliest=EARLIEST, latest=LATEST)) if "from" in query else None
    until = form.take("to", instant(subject="to", earliest=EARLIEST, latest=LATEST)) if "to" in query else None
    if since is not None and until is not None and since > until:
        form.fail("to", FieldError("to_before_from", "`to` must not be before `from`."))
    form.check()
    return OrderFilter(status, product, account, since, until, limit, cursor)


async def page(db: Database, wanted: OrderFilter) -> list[tuple[Row, int]]:
    """Orders matching `wanted`, newest first, each with the fils refunded (or being refunded) of it."""
    refunded = (
        sa.select(sa.func.coalesce(sa.func.sum(refunds.c.amount_fils), 0))
        .where(refunds.c.order_reference == orders.c.reference, refunds.c.status.in_(COUNTED))
        .correlate(orders)
        .scalar_subquery()
        .label("refunded_fils")
    )
    query = sa.select(orders, refunded)
    w = wanted
    if w.status is not None:
        query = query.where(orders.c.status == w.status)
    if w.product is not None:
        query = query.where(orders.c.product_id == w.product)
    if w.account is not None:
        query = query.where(orders.c.account_id == w.account)
    if w.since is not None:
        query = query.where(orders.c.created_at >= w.since)
    if w.until is not None:
        query = query.where(orders.c.created_at <= w.until)
    if w.cursor is not None:
        query = query.where(orders.c.id < w.cursor)
    query = query.order_by(orders.c.id.desc()).limit(wanted.limit)
    async with db.connect() as conn:
        return [(row, int(row.refunded_fils)) for row in (await conn.execute(query)).all()]


def day_range(query: Mapping[str, str]) -> tuple[date, date]:
    """`from` and `to` as calendar days (YYYY-MM-DD), both required, `to` not before `from`, at most
    MAX_DAYS of them; else the one 422."""
    form = Form(query)
    form.only(("from", "to"))
    days: dict[str, date] = {}
    for name in ("from", "to"):
        raw = query.get(name, "")
        try:
            days[name] = date.fromisoformat(raw) if _DAY.match(raw) else date.min
        except ValueError:
            days[name] = date.min
        if days[name] == date.min:
            form.fail(name, FieldError(f"{name}_invalid", f"`{name}` must be a day as YYYY-MM-DD."))
    form.check()
    first, last = days["from"], days["to"]
    if last < first:
        form.fail("to", FieldError("to_before_from", "`to` must not be before `from`."))
    elif (last - first).days + 1 > MAX_DAYS:
        form.fail("to", FieldError("range_too_long", f"Ask for at most {MAX_DAYS} days at a time."))
    form.check()
    return first, last


def _utc(day: date, tz: zoneinfo.ZoneInfo) -> datetime:
    return datetime.combine(day, time(), tz).astimezone(UTC).replace(tzinfo=None)


async def revenue(db: Database, *, first: date, last: date, tz: zoneinfo.ZoneInfo) -> dict[str, Any]:
    """Paid fils (and orders) from `first` to `last`, by product and by the seller's day; refunds apart."""
    start, end = _utc(first, tz), _utc(last + timedelta(days=1), tz)
    paid = sa.select(orders.c.product_id, orders.c.price_fils, orders.c.paid_at).where(
        orders.c.status == "paid", orders.c.paid_at >= start, orders.c.paid_at < end
    )
    refunded = sa.select(sa.func.coalesce(sa.func.sum(refunds.c.amount_fils), 0)).where(
        refunds.c.status.in_(COUNTED), refunds.c.created_at >= start, refunds.c.created_at < end
    )
    by_product: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    by_day: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    async with db.connect() as conn:
        rows = (await conn.execute(paid)).all()
        refunds_fils = int(await conn.scalar(refunded) or 0)
    for product, fils, paid_at in rows:
        day = paid_at.replace(tzinfo=UTC).astimezone(tz).date().isoformat()
        for bucket in (by_product[str(product)], by_day[day]):
            bucket[0] += 1
            bucket[1] += int(fils)
    return {
        "from": first.isoformat(),
        "to": last.isoformat(),
        "timezone": tz.key,
        "currency": "KWD",
        "orders": len(rows),
        "paid_fils": sum(int(fils) for _, fils, _ in rows),
        "refunds_fils": refunds_fils,
        "by_product": [{"product": k, "orders": v[0], "paid_fils": v[1]} for k, v in sorted(by_product.items())],
        "by_day": [{"day": k, "orders": v[0], "paid_fils": v[1]} for k, v in sorted(by_day.items())],
    }
