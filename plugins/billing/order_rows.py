"""Reading and writing orders. Every change of status is one conditional UPDATE (`WHERE status IN …`),
so two workers racing to move one order cannot both move it, and a paid order matches no update that
would take it anywhere else (rules.py)."""

from __future__ import annotations

import secrets
from collections.abc import Collection
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from edge.clock import utc_now
from edge.db import Database
from plugins.billing.rules import CREDITABLE, receipt_number
from plugins.billing.tables import orders, receipt_counters

Row = sa.Row[Any]

# Our order reference: sent as CustomerReference (MyFatoorah keeps up to 50 characters) and shown as the
# order's id. 20 random base32 characters: unguessable, so knowing one proves having been shown it.
_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
# The states the pending-order job asks MyFatoorah about while their next check is due (pending.py).
ASKED: tuple[str, ...] = ("pending", "failed")


def new_reference() -> str:
    return "ord_" + "".join(secrets.choice(_ALPHABET) for _ in range(20))


def looks_like_reference(value: str) -> bool:
    return len(value) == 24 and value.startswith("ord_") and all(c in _ALPHABET for c in value[4:])


async def insert(db: Database, values: dict[str, Any]) -> None:
    async with db.begin() as conn:
        await conn.execute(orders.insert().values(**values))


async def find(conn: AsyncConnection, *, reference: str | None = None, invoice_id: str | None = None) -> Row | None:
    if reference is not None:
        where = orders.c.reference == reference
    elif invoice_id is not None:
        where = orders.c.invoice_id == invoice_id
    else:
        return None
    return (await conn.execute(orders.select().where(where))).first()


async def read(db: Database, *, reference: str | None = None, invoice_id: str | None = None) -> Row | None:
    async with db.connect() as conn:
        return await find(conn, reference=reference, invoice_id=invoice_id)


async def move(
    conn: AsyncConnection,
    *,
    reference: str,
    to: str,
    from_: Collection[str],
    values: dict[str, Any] | None = None,
    exact: tuple[int, str | None] | None = None,
) -> bool:
    """Set the order's status to `to` (with `values`) only if it is now in `from_`, and, given `exact`
    (fils, currency), only if that is what the order costs; whether it moved."""
    where = [orders.c.reference == reference, orders.c.status.in_(list(from_))]
    if exact is not None:
        fils, currency = exact
        where += [orders.c.price_fils == fils, orders.c.currency == (currency or "")]
    result = await conn.execute(orders.update().where(*where).values(status=to, updated_at=utc_now(), **(values or {})))
    return bool(result.rowcount == 1)


async def set_fields(conn: AsyncConnection, *, reference: str, values: dict[str, Any]) -> None:
    await conn.execute(orders.update().where(orders.c.reference == reference).values(**values))


async def update(db: Database, *, reference: str, values: dict[str, Any], status: Collection[str]) -> bool:
    """Change fields of an order that is in one of `status`; whether it was."""
    async with db.begin() as conn:
        result = await conn.execute(
            orders.update()
            .where(orders.c.reference == reference, orders.c.status.in_(list(status)))
            .values(updated_at=utc_now(), **values)
        )
        return bool(result.rowcount == 1)


async def record_total_paid(conn: AsyncConnection, *, reference: str, fils: int, currency: str | None) -> bool:
    """Record on a paid order that MyFatoorah took `fils` in all for its invoice, more than its price (the
    payer paid twice). True only for the one caller that records a new, larger total, so each is
    reported once however many workers confirm the same answer."""
    result = await conn.execute(
        orders.update()
        .where(
            orders.c.reference == reference,
            orders.c.status == "paid",
            sa.or_(orders.c.confirmed_fils.is_(None), orders.c.confirmed_fils < fils),
        )
        .values(confirmed_fils=fils, confirmed_currency=currency, updated_at=utc_now())
    )
    return bool(result.rowcount == 1)


async def claim_callback_ask(db: Database, *, reference: str, seconds: float) -> bool:
    """Whether the payer's return may ask MyFatoorah about this order now: True for at most one caller per
    `seconds` per order, across workers and hosts (one conditional UPDATE), and only while it may still
    be credited. The return is an unauthenticated URL; reloading it must not spend GetPaymentStatus's
    per-account rate limit, which every other payer's confirmation needs too."""
    now = utc_now()
    async with db.begin() as conn:
        result = await conn.execute(
            orders.update()
            .where(
                orders.c.reference == reference,
                orders.c.status.in_(list(CREDITABLE)),
                sa.or_(
                    orders.c.callback_asked_at.is_(None),
                    orders.c.callback_asked_at <= now - timedelta(seconds=seconds),
                ),
            )
            .values(callback_asked_at=now)
        )
        return bool(result.rowcount == 1)


async def next_receipt(conn: AsyncConnection, *, year: int) -> str:
    """The year's next receipt number, taken in the caller's transaction: the counter row stays locked
    until it ends, and a rollback gives the number back, so a year's receipts have no gaps."""
    if conn.dialect.name == "sqlite":
        stmt: Any = (
            sqlite.insert(receipt_counters)
            .values(year=year, last=1)
            .on_conflict_do_update(index_elements=["year"], set_={"last": receipt_counters.c.last + 1})
        )
    else:
        stmt = (
            mysql.insert(receipt_counters)
            .values(year=year, last=1)
            .on_duplicate_key_update(last=receipt_counters.c.last + 1)
        )
    await conn.execute(stmt)
    last = await conn.scalar(sa.select(receipt_counters.c.last).where(receipt_counters.c.year == year))
    return receipt_number(year=year, number=int(last or 0))


async def page(db: Database, *, account_id: int, limit: int, before: int | None) -> list[Row]:
    """The account's orders, newest first; `before` is the id the previous page ended at."""
    query = orders.select().where(orders.c.account_id == account_id)
    if before is not None:
        query = query.where(orders.c.id < before)
    async with db.connect() as conn:
        return list((await conn.execute(query.order_by(orders.c.id.desc()).limit(limit))).all())


async def due(db: Database, *, now: datetime, limit: int) -> list[Row]:
    """Pending or failed orders with an invoice whose next check is due, the longest-waiting first. A failed
    order has a next check only until the job finds it past its expiry (pending.py)."""
    query = (
        orders.select()
        .where(orders.c.status.in_(ASKED), orders.c.invoice_id.is_not(None), orders.c.next_check_at <= now)
        .order_by(orders.c.next_check_at)
        .limit(limit)
    )
    async with db.connect() as conn:
        return list((await conn.execute(query)).all())
