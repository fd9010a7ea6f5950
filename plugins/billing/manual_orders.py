"""Orders an admin makes for an account that pays by bank transfer (Enterprise customers often do), and
marking one paid once the money has arrived.

A manual order has no MyFatoorah invoice (so neither the pending-order job nor reconciliation asks about
it) and `method` "bank_transfer". Marking it paid goes through THE crediting path
(`crediting.credit_paid_order`), for exactly the order's amount: twice, or by two admins at once, it is
credited once, and the admin's audit row is written in the crediting transaction itself, so an audit row
exists exactly when the credit does. An order paid through MyFatoorah cannot be marked paid by hand.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncConnection

from edge import audit
from edge.clock import utc_now
from edge.errors import GatewayError, NotFound
from edge.inputs import FieldError, Form, choice, integer, invalid, text
from edge.services import ACCOUNTS
from plugins.billing import order_rows
from plugins.billing.crediting import Credited, Payment, credit_paid_order
from plugins.billing.money import CURRENCY
from plugins.billing.order_rows import Row
from plugins.billing.products import find
from plugins.billing.tables import orders

if TYPE_CHECKING:
    from plugins.billing import Plugin

BANK_TRANSFER = "bank_transfer"
BIGINT_MAX = 2**63 - 1
MESSAGES = {
    "product_invalid": "Must be the id of a product from /api/billing/products.",
    "account_id_not_found": "No account has this id.",
}


def is_manual(order: Row) -> bool:
    return order.invoice_id is None and order.method == BANK_TRANSFER


async def create(plugin: Plugin, *, admin: audit.Actor, body: dict[str, Any]) -> Row:
    """A pending manual order of a product for an account; 422 naming every bad field."""
    form = Form(body, messages=MESSAGES)
    form.only(("account_id", "product", "reason"))
    account_id = form.take("account_id", integer(subject="account_id", low=1, high=BIGINT_MAX))
    product_id = form.take("product", choice(subject="product", options=[p.id for p in plugin.products]))
    reason = form.take("reason", text(subject="reason", max_length=500))
    form.check()
    account = await plugin.gateway.service(ACCOUNTS).account(account_id)
    if account is None:
        raise invalid({"account_id": FieldError("account_id_not_found", MESSAGES["account_id_not_found"])})
    product = find(plugin.products, product_id)
    assert product is not None
    now = utc_now()
    reference = order_rows.new_reference()
    async with plugin.gateway.database.begin() as conn:
        await conn.execute(
            orders.insert().values(
                reference=reference,
                account_id=account.id,
                user_id=account.owner_user_id,
                product_id=product.id,
                kind=product.kind,
                tier=product.tier,
                credits=product.credits,
                price_fils=product.price_fils,
                currency=CURRENCY,
                status="pending",
                method=BANK_TRANSFER,
                locale=account.locale if account.locale in ("ar", "en") else "ar",
                label_ar=product.label_ar,
                label_en=product.label_en,
                created_at=now,
                expires_at=now + timedelta(seconds=plugin.settings.order_expiry_seconds),
                check_attempts=0,
                updated_at=now,
            )
        )
        await admin.record(
            conn,
            "billing.manual_order",
            f"order:{reference}",
            reason=reason,
            details={"account_id": account.id, "product": product.id, "price_fils": product.price_fils},
        )
        row = await order_rows.find(conn, reference=reference)
    assert row is not None
    return row


async def mark_paid(plugin: Plugin, *, reference: str, admin: audit.Actor, body: dict[str, Any]) -> Credited:
    """Credit the manual order `reference` as paid by the bank transfer `body["reference"]`, once.
    404 for no such order, 409 `not_a_manual_order` for one paid through MyFatoorah."""
    form = Form(body)
    form.only(("reference", "reason"))
    transfer = form.take("reference", text(subject="reference", max_length=64))
    reason = form.take("reason", text(subject="reason", max_length=500))
    form.check()
    order = await order_rows.read(plugin.gateway.database, reference=reference)
    if order is None:
        raise NotFound("No such order.", code="order_not_found")
    if not is_manual(order):
        raise GatewayError(
            "Only a manual (bank transfer) order can be marked paid by hand.", status=409, code="not_a_manual_order"
        )

    async def audited(conn: AsyncConnection) -> None:
        await admin.record(
            conn,
            "billing.mark_paid",
            f"order:{reference}",
            reason=reason,
            details={"transfer_reference": transfer, "amount_fils": int(order.price_fils)},
        )

    return await credit_paid_order(
        plugin.gateway,
        reference=reference,
        payment=Payment(
            amount_fils=int(order.price_fils), currency=str(order.currency), payment_id=transfer, method=BANK_TRANSFER
        ),
        rules=plugin.rules,
        also=audited,
    )
