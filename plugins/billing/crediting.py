"""THE one place a paid order is credited: `credit_paid_order`. The callback, the webhook, the
pending-order job and an admin's mark-paid all end here.

One database transaction marks the order paid, takes the year's next receipt number, writes the credits
ledger row, sets the plan (tier and expiry) and stores the events; it commits all of that or none. What
stays true, however many callers race on any number of workers and hosts:
- It starts with a conditional UPDATE of the order (`pending`/`failed`/`expired` → `paid`, only for the
  order's exact fils and currency): the first write, so SQLite's write lock and MariaDB's row lock are
  held before anything is read. Whoever waits on that lock finds the order paid and credits nothing.
- The ledger row is idempotent by (kind, `billing:<reference>`), and MyFatoorah's invoice id is unique
  per order: a second credit of the same payment cannot be written even by a path that skipped the above.
- A payment that does not match the order (amount in fils, currency KWD) marks it `disputed`, publishes
  `billing.disputed` and credits nothing. A paid or disputed order is never moved by this function.
- The grant locks the account's balance row before the account is read, so two plans paid at once for
  one account extend its expiry one after the other, never both from the same old expiry.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from edge.clock import utc_now
from edge.events import EnterpriseRegistered, Event
from edge.services import ACCOUNTS, CREDITS
from edge.transient import mysql_transient, retrying
from plugins.billing import order_rows
from plugins.billing.events import BillingDisputed, SubscriptionActivated, TopupPaid
from plugins.billing.order_rows import Row
from plugins.billing.rules import CREDITABLE, plan_expiry

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

    from edge.gateway import Gateway


class UnknownOrder(LookupError):
    """No order has this reference."""


@dataclass(frozen=True, slots=True)
class Payment:
    """What was paid, as confirmed by MyFatoorah's GetPaymentStatus (or by an admin for a manual order)."""

    amount_fils: int
    currency: str | None
    payment_id: str | None = None
    method: str | None = None


@dataclass(frozen=True, slots=True)
class PlanRules:
    """How long a paid plan lasts, and which tier makes a purchase a new Enterprise customer."""

    days: int = 30
    enterprise_tier: str = "enterprise"


@dataclass(frozen=True, slots=True)
class Credited:
    """The order as it is after the call; `credited` is True only for the one call that credited it."""

    order: Row
    credited: bool

    @property
    def status(self) -> str:
        return str(self.order.status)


async def credit_paid_order(
    gateway: Gateway,
    *,
    reference: str,
    payment: Payment,
    rules: PlanRules,
    now: datetime | None = None,
    also: Callable[[AsyncConnection], Awaitable[None]] | None = None,
) -> Credited:
    """Credit the order `reference` for `payment`, exactly once (see the module docstring). `also(conn)`
    runs in the crediting transaction only when this call credits (an admin's audit row for mark-paid).

    Raises UnknownOrder when there is no such order. Whatever else happened before (already paid,
    disputed, a concurrent call won) is not an error: the result says what the order now is."""
    moment = now or utc_now()

    async def once() -> Credited:
        async with gateway.database.begin() as conn:
            credited = await _credit_in(gateway, conn, reference=reference, payment=payment, rules=rules, now=moment)
            if credited.credited and also is not None:
                await also(conn)
            return credited

    return await retrying(once, transient=_transient)


def _transient(exc: BaseException) -> bool:
    """A deadlock or lock-wait timeout (MariaDB), a busy lock (SQLite): the whole transaction runs again,
    which is safe because nothing of it stayed (the events are stored in it, delivered after its commit)."""
    if not isinstance(exc, sa.exc.OperationalError):
        return False
    return mysql_transient(exc.orig) or "database is locked" in str(exc.orig)


async def _credit_in(
    gateway: Gateway, conn: AsyncConnection, *, reference: str, payment: Payment, rules: PlanRules, now: datetime
) -> Credited:
    won = await order_rows.move(
        conn,
        reference=reference,
        to="paid",
        from_=CREDITABLE,
        values={"paid_at": now, "payment_id": payment.payment_id, "method": payment.method, "next_check_at": None},
        exact=(payment.amount_fils, payment.currency),
    )
    order = await order_rows.find(conn, reference=reference)
    if order is None:
        raise UnknownOrder(reference)
    if not won:
        if order.status in CREDITABLE:
            # The only reason it did not move: the payment is not what the order asked for.
            return await _dispute(gateway, conn, order=order, payment=payment)
        return Credited(order, credited=False)
    await _credit(gateway, conn, order=order, rules=rules, now=now)
    order = await order_rows.find(conn, reference=reference)
    assert order is not None
    return Credited(order, credited=True)


async def _credit(gateway: Gateway, conn: AsyncConnection, *, order: Row, rules: PlanRules, now: datetime) -> None:
    # Receipts are numbered per calendar year where the seller is (the config's `timezone`).
    receipt = await order_rows.next_receipt(conn, year=now.replace(tzinfo=UTC).astimezone(gateway.tz).year)
    credits_milli = int(order.credits) * 1000
    if not credits_milli:
        balance_milli = (await gateway.service(CREDITS).balance(int(order.account_id))).balance_milli
    else:
        grant = await gateway.service(CREDITS).grant(
            account_id=int(order.account_id),
            amount_milli=credits_milli,
            kind="subscription" if order.kind == "plan" else "topup",
            idempotency_key=f"billing:{order.reference}",
            reason=f"{order.kind} {order.product_id}, receipt {receipt}",
            actor="billing",
            conn=conn,
        )
        balance_milli = grant.balance_after_milli
    accounts = gateway.service(ACCOUNTS)
    account = await accounts.account(int(order.account_id), conn=conn)
    user_id = None if order.user_id is None else int(order.user_id)
    # The fields every paid-order event shares (typed by the event classes themselves).
    common: dict[str, Any] = {
        "account_id": int(order.account_id),
        "user_id": user_id,
        "locale": str(order.locale),
        "phone": account.phone if account is not None else None,
        "order_id": str(order.reference),
        "product": str(order.product_id),
        "amount_fils": int(order.price_fils),
        "currency": str(order.currency),
        "credits_milli": credits_milli,
        "balance_milli": balance_milli,
        "receipt_number": receipt,
    }
    events: list[Event] = []
    values: dict[str, object] = {"receipt_number": receipt}
    if order.kind == "plan" and order.tier is not None and account is not None:
        tier = str(order.tier)
        expiry = plan_expiry(
            current_tier=account.tier, current_expiry=account.plan_expires_at, tier=tier, now=now, days=rules.days
        )
        await accounts.set_plan(account_id=account.id, tier=tier, plan_expires_at=expiry, conn=conn)
        values["plan_expires_at"] = expiry
        events.append(SubscriptionActivated(**common, tier=tier, plan_expires_at=expiry))
        renewing = account.tier == tier and account.plan_expires_at is not None and account.plan_expires_at > now
        if tier == rules.enterprise_tier and not renewing:
            events.append(
                EnterpriseRegistered(
                    account_id=account.id,
                    user_id=user_id or 0,
                    user_name=str(order.buyer_name or ""),
                    email=str(order.buyer_email or ""),
                    phone=account.phone or "",
                    locale=str(order.locale),
                    tier=tier,
                )
            )
    else:
        events.append(TopupPaid(**common))
    await order_rows.set_fields(conn, reference=str(order.reference), values=values)
    await gateway.events.publish(*events, conn=conn)


async def _dispute(gateway: Gateway, conn: AsyncConnection, *, order: Row, payment: Payment) -> Credited:
    values = {"confirmed_fils": payment.amount_fils, "confirmed_currency": payment.currency, "next_check_at": None}
    if payment.payment_id is not None:
        values["payment_id"] = payment.payment_id
    moved = await order_rows.move(conn, reference=str(order.reference), to="disputed", from_=CREDITABLE, values=values)
    if moved:
        account = await gateway.service(ACCOUNTS).account(int(order.account_id), conn=conn)
        event = BillingDisputed(
            account_id=int(order.account_id),
            user_id=None if order.user_id is None else int(order.user_id),
            locale=str(order.locale),
            phone=account.phone if account is not None else None,
            order_id=str(order.reference),
            product=str(order.product_id),
            amount_fils=int(order.price_fils),
            currency=str(order.currency),
            confirmed_fils=payment.amount_fils,
            confirmed_currency=payment.currency,
            invoice_id=str(order.invoice_id or ""),
        )
        await gateway.events.publish(event, conn=conn)
    found = await order_rows.find(conn, reference=str(order.reference))
    assert found is not None
    return Credited(found, credited=False)
