"""Starting a purchase: the order is stored first (pending, with our reference), then MyFatoorah is asked
for an invoice and its payment page. The order, not a web session, is what remembers the purchase, so a
payment that arrives after the payer closed the tab is still found and credited.

The payer's return URLs carry our reference (`?order=`); MyFatoorah adds `paymentId`. Neither is trusted:
the callback confirms with MyFatoorah before anything changes (confirmation.py).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from edge.clock import utc_now
from edge.errors import TooManyRequests
from edge.inputs import Form, choice
from edge.services import PortalUser
from plugins.billing import answers, order_rows
from plugins.billing.gateway_client import CheckoutRequest, NotConfigured, PaymentError
from plugins.billing.money import CURRENCY
from plugins.billing.order_rows import Row
from plugins.billing.products import find
from plugins.billing.tables import orders

if TYPE_CHECKING:
    from plugins.billing import Plugin

log = logging.getLogger("resayil.billing")


async def checkout(plugin: Plugin, *, user: PortalUser, body: dict[str, Any]) -> Row:
    """A new pending order for the product the body names, with MyFatoorah's payment URL; 422 for an
    unknown product, 429 past `max_pending_orders`, 503 when payments are not configured or MyFatoorah
    cannot be reached (the order is then `failed`, and nothing was charged)."""
    locale = answers.locale_of(user.locale)
    if not plugin.client.configured:
        raise answers.not_configured(locale)
    form = Form(body, messages={"product_invalid": "Must be the id of a product from /api/billing/products."})
    form.only(("product",))
    product_id = form.take("product", choice(subject="product", options=[p.id for p in plugin.products]))
    form.check()
    product = find(plugin.products, product_id)
    assert product is not None
    s = plugin.settings
    now = utc_now()
    db = plugin.gateway.database
    if await _pending(plugin, account_id=user.account_id) >= s.max_pending_orders:
        raise _too_many()
    reference = order_rows.new_reference()
    await order_rows.insert(
        db,
        {
            "reference": reference,
            "account_id": user.account_id,
            "user_id": user.user_id,
            "product_id": product.id,
            "kind": product.kind,
            "tier": product.tier,
            "credits": product.credits,
            "price_fils": product.price_fils,
            "currency": CURRENCY,
            "status": "pending",
            "locale": locale,
            "label_ar": product.label_ar,
            "label_en": product.label_en,
            "buyer_name": user.name[:200],
            "buyer_email": user.email[:320],
            "created_at": now,
            "expires_at": now + timedelta(seconds=s.order_expiry_seconds),
            "next_check_at": now + timedelta(seconds=s.first_check_seconds),
            "check_attempts": 0,
            "updated_at": now,
        },
    )
    # Counted again with this order committed: of concurrent checkouts, the last to commit sees all the
    # others, so no more than the cap can pass (a race may refuse one too many, never let one too many in).
    if await _pending(plugin, account_id=user.account_id) > s.max_pending_orders:
        async with db.begin() as conn:
            await conn.execute(orders.delete().where(orders.c.reference == reference, orders.c.invoice_id.is_(None)))
        raise _too_many()
    api = plugin.gateway.config.server.public_url.rstrip("/") + "/api/billing"
    request = CheckoutRequest(
        amount_fils=product.price_fils,
        reference=reference,
        item=product.label(locale),
        customer_name=user.name or user.email,
        callback_url=f"{api}/callback?order={reference}",
        error_url=f"{api}/error?order={reference}",
        language=locale,
        customer_email=user.email or None,
    )
    try:
        invoice = await plugin.client.payment_link(request=request)
    except (PaymentError, ValueError) as exc:
        log.warning("checkout failed: %s", type(exc).__name__, extra={"fields": {"order": reference}})
        await order_rows.update(
            db, reference=reference, values={"status": "failed", "next_check_at": None}, status=("pending",)
        )
        if isinstance(exc, NotConfigured):
            raise answers.not_configured(locale) from None
        raise answers.provider_unavailable(locale) from None
    await order_rows.update(
        db,
        reference=reference,
        values={"invoice_id": invoice.invoice_id, "payment_url": invoice.payment_url[:1000]},
        status=("pending",),
    )
    row = await order_rows.read(db, reference=reference)
    assert row is not None
    return row


async def _pending(plugin: Plugin, *, account_id: int) -> int:
    """The account's orders still waiting for a payment (pending and not past their expiry)."""
    async with plugin.gateway.database.connect() as conn:
        count = await conn.scalar(
            sa.select(sa.func.count())
            .select_from(orders)
            .where(orders.c.account_id == account_id, orders.c.status == "pending", orders.c.expires_at > utc_now())
        )
    return int(count or 0)


def _too_many() -> TooManyRequests:
    return TooManyRequests(
        "Too many unfinished payments: pay or wait for one to expire first.", code="too_many_pending_orders"
    )
