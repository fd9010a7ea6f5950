"""Refunds an admin asks for: recorded, sent to MyFatoorah (MakeRefund) one at a time per order, and the
credits still available taken back.

What stays true, on any number of workers and hosts:
- A refund starts with a conditional UPDATE of its paid order, the transaction's first write: the order's
  row lock (SQLite's write lock) is held while the amount already refunded is summed and the refund row is
  written, so two admins cannot together refund more than was paid, and only one refund of an order is
  `requesting` (its MakeRefund call in flight) at a time; another answers 409 `refund_in_progress`.
- `key` (the admin's Idempotency-Key, or a digest of order, admin, amount and reason) is unique: a double
  click finds the first refund instead of making a second.
- The credits taken back are the order's credits in proportion to the amount, at most what the account has
  available, never below zero: one negative `adjustment` ledger row (`billing-refund:<key>`) through the
  credits service, in the transaction that records the refund and its audit row.
- MakeRefund is never retried blindly (a second call could refund twice). A refusal marks the refund
  `failed` and gives the credits back; no usable answer marks it `unconfirmed` and keeps the amount
  counted (it may have been made); the outcome webhook (code 2) then settles it.
- Statuses: requesting → pending (MyFatoorah took the request) → refunded | rejected (webhook);
  requesting → failed | unconfirmed → refunded | rejected. A manual (bank transfer) order has no invoice:
  its refund is recorded as `refunded` at once, the money being returned by hand.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from edge import audit
from edge.clock import utc_now
from edge.errors import GatewayError, NotFound
from edge.inputs import FieldError, invalid
from edge.services import CREDITS, BalanceTooLow
from plugins.billing import order_rows, refund_plan
from plugins.billing.gateway_client import NotConfigured, PaymentError, Refused
from plugins.billing.money import AmountError, from_decimal
from plugins.billing.order_rows import Row
from plugins.billing.tables import orders, refunds
from plugins.billing.webhooks import Webhook

if TYPE_CHECKING:
    from plugins.billing import Plugin

log = logging.getLogger("resayil.billing")

# Refunds whose amount counts against what was paid: all but those that certainly did not happen.
COUNTED = ("requesting", "pending", "refunded", "unconfirmed")
# A `requesting` refund older than this lost its worker mid-call: it no longer blocks the order.
STALE_SECONDS = 300
_REFUNDED = {"REFUNDED", "SUCCESS", "COMPLETED"}
_REJECTED = {"CANCELED", "CANCELLED", "REJECTED", "FAILED", "DECLINED"}


@dataclass(frozen=True, slots=True)
class Ask:
    """One admin's request to refund `amount_fils` of the order `reference`."""

    reference: str
    amount_fils: int
    reason: str
    admin_user_id: int
    ip: str | None
    idempotency_key: str | None = None

    @property
    def key(self) -> str:
        """Equal for every repeat of this request (a double click, a retried POST), different otherwise."""
        if self.idempotency_key:
            source = f"{self.admin_user_id}|key|{self.idempotency_key}"
        else:
            source = f"{self.admin_user_id}|{self.reference}|{self.amount_fils}|{self.reason}"
        return hashlib.sha256(source.encode()).hexdigest()


def refund_in_progress() -> GatewayError:
    return GatewayError(
        "Another refund of this order is being sent to MyFatoorah; try again in a moment.",
        status=409,
        code="refund_in_progress",
    )


async def find(conn: AsyncConnection, *, key: str) -> Row | None:
    return (await conn.execute(refunds.select().where(refunds.c.key == key))).first()


async def of_order(conn: AsyncConnection, *, reference: str) -> list[Row]:
    query = refunds.select().where(refunds.c.order_reference == reference).order_by(refunds.c.id)
    return list((await conn.execute(query)).all())


async def request_refund(plugin: Plugin, ask: Ask) -> tuple[Row, bool]:
    """The refund for `ask` and whether this call made it (False: a repeat found the first one).
    404 `order_not_found`, 409 `order_not_refundable` (not paid) or `refund_in_progress`, 422 for an
    amount above what is left to refund."""
    db = plugin.gateway.database
    key = ask.key
    async with db.connect() as conn:
        first = await find(conn, key=key)
    if first is not None:
        return _same(first, ask), False
    try:
        row, created = await _record(plugin, ask, key=key)
    except sa.exc.IntegrityError:
        # The same request, recorded by a concurrent copy of it a moment ago.
        async with db.connect() as conn:
            first = await find(conn, key=key)
        if first is None:
            raise
        return _same(first, ask), False
    if not created:
        return _same(row, ask), False
    if row.status != "requesting":
        return row, True
    return await _ask_provider(plugin, row), True


def _same(first: Row, ask: Ask) -> Row:
    if first.order_reference != ask.reference or int(first.amount_fils) != ask.amount_fils:
        raise GatewayError(
            "This Idempotency-Key was used for another refund.", status=409, code="idempotency_key_reused"
        )
    return first


async def _record(plugin: Plugin, ask: Ask, *, key: str) -> tuple[Row, bool]:
    now = utc_now()
    async with plugin.gateway.database.begin() as conn:
        locked = await conn.execute(
            orders.update().where(orders.c.reference == ask.reference, orders.c.status == "paid").values(updated_at=now)
        )
        order = await order_rows.find(conn, reference=ask.reference)
        if order is None:
            raise NotFound("No such order.", code="order_not_found")
        if locked.rowcount != 1:
            raise GatewayError(
                f"Only a paid order can be refunded; this one is {order.status}.",
                status=409,
                code="order_not_refundable",
            )
        first = await find(conn, key=key)
        if first is not None:
            return first, False  # a concurrent copy of this request held the lock first
        await _unblock_stale(conn, reference=ask.reference, now=now)
        held = await conn.execute(
            sa.select(refunds.c.status, sa.func.coalesce(sa.func.sum(refunds.c.amount_fils), 0))
            .where(refunds.c.order_reference == ask.reference, refunds.c.status.in_(COUNTED))
            .group_by(refunds.c.status)
        )
        counted = {str(status): int(total) for status, total in held.all()}
        if "requesting" in counted:
            raise refund_in_progress()
        left = int(order.price_fils) - sum(counted.values())
        if ask.amount_fils > left:
            raise invalid(
                {
                    "amount_fils": FieldError(
                        "amount_fils_too_large", f"At most {left} fils of this order are left to refund."
                    )
                }
            )
        manual = order.invoice_id is None
        result = await conn.execute(
            refunds.insert().values(
                key=key,
                order_reference=ask.reference,
                account_id=int(order.account_id),
                amount_fils=ask.amount_fils,
                status="refunded" if manual else "requesting",
                reason=ask.reason,
                actor_user_id=ask.admin_user_id,
                created_at=now,
                updated_at=now,
            )
        )
        key_row = result.inserted_primary_key
        assert key_row is not None
        refund_id = int(key_row[0])
        taken = await _take_back(plugin, conn, order=order, amount_fils=ask.amount_fils, key=key, ask=ask)
        await conn.execute(refunds.update().where(refunds.c.id == refund_id).values(credits_taken_milli=taken))
        cut = None
        if manual and await refund_plan.fully_refunded(conn, order=order):
            cut = await refund_plan.end_period(plugin, conn, order=order, now=now)
        await audit.record(
            conn,
            actor_user_id=ask.admin_user_id,
            action="billing.refund",
            target=f"order:{ask.reference}",
            reason=ask.reason,
            ip=ask.ip,
            details={
                "refund": refund_id,
                "amount_fils": ask.amount_fils,
                "credits_taken_milli": taken,
                "manual": manual,
                **(cut.details() if cut is not None else {}),
            },
        )
        row = (await conn.execute(refunds.select().where(refunds.c.id == refund_id))).one()
    return row, True


async def _unblock_stale(conn: AsyncConnection, *, reference: str, now: datetime) -> None:
    await conn.execute(
        refunds.update()
        .where(
            refunds.c.order_reference == reference,
            refunds.c.status == "requesting",
            refunds.c.updated_at < now - timedelta(seconds=STALE_SECONDS),
        )
        .values(status="unconfirmed", updated_at=now)
    )


async def _take_back(plugin: Plugin, conn: AsyncConnection, *, order: Row, amount_fils: int, key: str, ask: Ask) -> int:
    """Take back the order's credits for `amount_fils`, at most what is available; milli-credits taken."""
    want = int(order.credits) * 1000 * amount_fils // int(order.price_fils)
    credits = plugin.gateway.service(CREDITS)
    while want > 0:
        try:
            await credits.grant(
                account_id=int(order.account_id),
                amount_milli=-want,
                kind="adjustment",
                idempotency_key=f"billing-refund:{key}",
                reason=f"refund of {amount_fils} fils of order {order.reference}: {ask.reason}"[:500],
                actor=str(ask.admin_user_id),
                conn=conn,
            )
            return want
        except BalanceTooLow as exc:
            # Read under the balance's lock: take what is there, never more.
            want = min(want - 1, max(0, exc.available_milli))
    return 0


async def _ask_provider(plugin: Plugin, row: Row) -> Row:
    """MakeRefund for a recorded refund, once; the refund as it is after."""
    async with plugin.gateway.database.connect() as conn:
        order = await order_rows.find(conn, reference=str(row.order_reference))
    assert order is not None and order.invoice_id is not None
    try:
        made = await plugin.client.refund(
            invoice_id=str(order.invoice_id), amount_fils=int(row.amount_fils), comment=str(row.reason)
        )
    except (Refused, NotConfigured) as exc:
        log.warning("refund refused: %s", type(exc).__name__, extra={"fields": {"order": row.order_reference}})
        return await _settle(plugin, row, status="failed", from_=("requesting",))
    except PaymentError as exc:
        log.warning("refund unconfirmed: %s", type(exc).__name__, extra={"fields": {"order": row.order_reference}})
        return await _settle(plugin, row, status="unconfirmed", from_=("requesting",))
    return await _settle(plugin, row, status="pending", from_=("requesting",), provider_refund_id=made.refund_id[:32])


async def _settle(
    plugin: Plugin, row: Row, *, status: str, from_: tuple[str, ...], provider_refund_id: str | None = None
) -> Row:
    """Move the refund to `status` if it is in `from_`; a refund that did not happen gives its credits back."""
    values: dict[str, Any] = {"status": status, "updated_at": utc_now()}
    if provider_refund_id is not None:
        values["provider_refund_id"] = provider_refund_id
    async with plugin.gateway.database.begin() as conn:
        if status == "refunded":
            # The order's row lock first (as a new refund takes it): confirmations of one order add up in turn.
            await conn.execute(
                orders.update().where(orders.c.reference == row.order_reference).values(updated_at=values["updated_at"])
            )
        moved = await conn.execute(
            refunds.update().where(refunds.c.id == row.id, refunds.c.status.in_(from_)).values(**values)
        )
        taken = int(row.credits_taken_milli)
        if moved.rowcount == 1 and status == "refunded":
            await _confirmed(plugin, conn, row=row)
        if moved.rowcount == 1 and status in ("failed", "rejected") and taken > 0:
            await plugin.gateway.service(CREDITS).grant(
                account_id=int(row.account_id),
                amount_milli=taken,
                kind="adjustment",
                idempotency_key=f"billing-refund-undone:{row.key}",
                reason=f"refund of order {row.order_reference} {status}: credits given back",
                actor="billing",
                conn=conn,
            )
        return (await conn.execute(refunds.select().where(refunds.c.id == row.id))).one()


async def _confirmed(plugin: Plugin, conn: AsyncConnection, *, row: Row) -> None:
    """A refund just became `refunded`: when that completes a full refund of a plan order, its period ends
    (refund_plan.py), audited. The caller holds the order's row lock."""
    now = utc_now()
    reference = str(row.order_reference)
    order = await order_rows.find(conn, reference=reference)
    if order is None or not await refund_plan.fully_refunded(conn, order=order):
        return
    cut = await refund_plan.end_period(plugin, conn, order=order, now=now)
    if cut is not None:
        await audit.record(
            conn,
            actor_user_id=None if row.actor_user_id is None else int(row.actor_user_id),
            action="billing.plan_refunded",
            target=f"order:{reference}",
            reason="full refund confirmed by MyFatoorah: the plan period it paid for ends",
            ip=None,
            details={"refund": int(row.id), **cut.details()},
        )


async def refund_event(plugin: Plugin, event: Webhook) -> str:
    """MyFatoorah's refund outcome (webhook code 2, signature verified): the refund's status after it."""
    data = event.data
    if event.version == "v2":
        refund = data.get("Refund")
        amount = data.get("Amount")
        refund_id = refund.get("Id") if isinstance(refund, dict) else None
        value = amount.get("ValueInBaseCurrency") if isinstance(amount, dict) else None
    else:
        refund_id, value = data.get("RefundId"), data.get("Amount")
    provider_id = str(refund_id) if isinstance(refund_id, (str, int)) and not isinstance(refund_id, bool) else ""
    outcome = event.status.upper()
    async with plugin.gateway.database.connect() as conn:
        row = (await conn.execute(refunds.select().where(refunds.c.provider_refund_id == provider_id))).first()
        if row is None:
            row = await _unconfirmed(conn, invoice_id=event.invoice_id, value=value)
    if row is None:
        log.warning("refund webhook for no refund of ours", extra={"fields": {"invoice": event.invoice_id}})
        return "ignored"
    later = ("pending", "unconfirmed", "requesting")
    if outcome in _REFUNDED:
        row = await _settle(plugin, row, status="refunded", from_=later, provider_refund_id=provider_id[:32] or None)
    elif outcome in _REJECTED:
        row = await _settle(plugin, row, status="rejected", from_=later, provider_refund_id=provider_id[:32] or None)
    return str(row.status)


async def _unconfirmed(conn: AsyncConnection, *, invoice_id: str, value: object) -> Row | None:
    """The one refund whose MakeRefund answer was lost, for this invoice and amount (None unless exactly one)."""
    try:
        fils = from_decimal(value)
    except AmountError:
        return None
    query = (
        sa.select(refunds)
        .join(orders, orders.c.reference == refunds.c.order_reference)
        .where(orders.c.invoice_id == invoice_id, refunds.c.status == "unconfirmed", refunds.c.amount_fils == fils)
    )
    found = list((await conn.execute(query)).all())
    return found[0] if len(found) == 1 else None
