"""The billing JSON API under /api/billing: products, checkout, the return from MyFatoorah, the account's
orders, and MyFatoorah's webhooks.

Nothing here credits anything by itself. The return (callback and error URL) and the webhook only make
the gateway ask MyFatoorah (confirmation.py), and only a confirmed payment is credited, once
(crediting.py). Attackers' inputs: a forged or replayed webhook (401, or 200 ignored), someone else's
order reference in a callback (the answer must name that order's invoice, so nothing moves), another
account's order id (404, as a missing one), and oversized or malformed bodies (edge/inputs.py).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING
from urllib.parse import urlencode

import sqlalchemy as sa
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from edge.clock import utc_now
from edge.errors import GatewayError, NotFound
from edge.inputs import page_args, read_body, read_json
from edge.services import GUARDS
from plugins.billing import answers, order_rows
from plugins.billing.checkout import checkout
from plugins.billing.gateway_client import NotConfigured, PaymentError
from plugins.billing.rules import CREDITABLE
from plugins.billing.tables import webhooks
from plugins.billing.webhooks import Webhook, WebhookRejected, verify

if TYPE_CHECKING:
    from plugins.billing import Plugin

log = logging.getLogger("resayil.billing")
MAX_PAGE = 100


def routes(plugin: Plugin) -> list[BaseRoute]:
    seller = answers.both(plugin.settings.seller_ar, plugin.settings.seller_en)

    async def products(request: Request) -> Response:
        return JSONResponse({"products": [p.as_json() for p in plugin.products]})

    async def start_checkout(request: Request) -> Response:
        user = await plugin.gateway.service(GUARDS).require_user(request)
        order = await checkout(plugin, user=user, body=await read_json(request))
        return JSONResponse({"order": answers.order_json(order, seller=seller)}, status_code=201)

    async def orders(request: Request) -> Response:
        user = await plugin.gateway.service(GUARDS).require_user(request)
        limit, cursor = page_args(request.query_params, default=20, max_page=MAX_PAGE)
        rows = await order_rows.page(plugin.gateway.database, account_id=user.account_id, limit=limit, before=cursor)
        more = len(rows) == limit
        return JSONResponse(
            {
                "orders": [answers.order_json(row, seller=seller) for row in rows],
                "next_cursor": int(rows[-1].id) if rows and more else None,
            }
        )

    async def order(request: Request) -> Response:
        user = await plugin.gateway.service(GUARDS).require_user(request)
        reference = request.path_params["reference"]
        row = None
        if order_rows.looks_like_reference(reference):
            row = await order_rows.read(plugin.gateway.database, reference=reference)
        if row is None or int(row.account_id) != user.account_id:
            raise NotFound("No such order.", code="order_not_found")
        return JSONResponse({"order": answers.order_json(row, seller=seller)})

    async def returned(request: Request) -> Response:
        """The payer's return from MyFatoorah: confirm, then 303 to the portal's order result page."""
        reference = request.query_params.get("order", "")
        payment_id = request.query_params.get("paymentId", "")
        row = None
        if order_rows.looks_like_reference(reference):
            row = await order_rows.read(plugin.gateway.database, reference=reference)
        if row is None:
            return _result(plugin, reference=None, result="unknown")
        result = str(row.status)
        if row.status in CREDITABLE and payment_id:
            if not await order_rows.claim_callback_ask(
                plugin.gateway.database, reference=reference, seconds=plugin.settings.callback_check_seconds
            ):
                # Asked a moment ago (a reload, or a flood), or settled meanwhile: no call to MyFatoorah.
                now = await order_rows.read(plugin.gateway.database, reference=reference)
                result = "confirming" if now is None or now.status in CREDITABLE else str(now.status)
                return _result(plugin, reference=reference, result=result)
            try:
                result = await plugin.confirmer.confirm(row, key=payment_id, key_type="PaymentId", source="callback")
            except PaymentError as exc:
                # MyFatoorah slow or down: the portal polls the order while the job confirms it.
                log.warning("callback not confirmed: %s", type(exc).__name__, extra={"fields": {"order": reference}})
                await plugin.check_soon(reference)
                result = "confirming"
        return _result(plugin, reference=reference, result=result)

    async def webhook(request: Request) -> Response:
        body = await read_body(request, limit=plugin.gateway.config.api.max_body_bytes)
        try:
            event = verify(body=body, headers=request.headers.items(), secret=plugin.settings.webhook_secret or None)
        except WebhookRejected as exc:
            log.warning("webhook rejected: %s", exc)
            raise GatewayError(
                "The webhook signature is missing or wrong.", status=401, code="invalid_signature"
            ) from None
        if not await _first_time(plugin, event.replay_key, event):
            return JSONResponse({"ok": True, "ignored": "duplicate"})
        if event.code == 2:
            return JSONResponse({"ok": True, "refund": await plugin.refund_event(event)})
        if event.code != 1:
            return JSONResponse({"ok": True, "ignored": "event"})
        row = None
        if order_rows.looks_like_reference(event.customer_reference):
            row = await order_rows.read(plugin.gateway.database, reference=event.customer_reference)
        if row is None or row.invoice_id != event.invoice_id:
            log.warning("webhook for no order of ours", extra={"fields": {"invoice": event.invoice_id}})
            return JSONResponse({"ok": True, "ignored": "order"})
        if not event.payment_id or not _worth_asking(row, event):
            return JSONResponse({"ok": True, "status": row.status})
        try:
            status = await plugin.confirmer.confirm(row, key=event.payment_id, key_type="PaymentId", source="webhook")
        except PaymentError as exc:
            # Forget the event so MyFatoorah's retry is acted on; the job re-checks the order meanwhile.
            await _forget(plugin, event.replay_key)
            await plugin.check_soon(str(row.reference))
            log.warning("webhook not confirmed: %s", type(exc).__name__, extra={"fields": {"order": row.reference}})
            if isinstance(exc, NotConfigured):
                raise answers.not_configured("en") from None
            raise answers.provider_unavailable("en") from None
        return JSONResponse({"ok": True, "status": status})

    return [
        Route("/api/billing/products", products, methods=["GET"]),
        Route("/api/billing/checkout", start_checkout, methods=["POST"]),
        Route("/api/billing/orders", orders, methods=["GET"]),
        Route("/api/billing/orders/{reference}", order, methods=["GET"]),
        Route("/api/billing/callback", returned, methods=["GET"]),
        Route("/api/billing/error", returned, methods=["GET"]),
        Route("/api/billing/webhooks/myfatoorah", webhook, methods=["POST"]),
    ]


def _result(plugin: Plugin, *, reference: str | None, result: str) -> Response:
    query = {"result": result} | ({"order": reference} if reference else {})
    base = plugin.gateway.config.server.public_url.rstrip("/") + plugin.settings.result_path
    return RedirectResponse(f"{base}?{urlencode(query)}", status_code=303)


def _worth_asking(row: order_rows.Row, event: Webhook) -> bool:
    """Whether the webhook is worth a GetPaymentStatus call: the order may still be credited, or it is paid
    and the signed event names another successful payment (the payer paid twice: the admins are told)."""
    if row.status in CREDITABLE:
        return True
    return row.status == "paid" and event.status.upper() == "SUCCESS" and event.payment_id != row.payment_id


async def _first_time(plugin: Plugin, replay_key: str, event: Webhook) -> bool:
    """Record the signed event; False when it (or its v2 Event.Reference) was recorded before."""
    try:
        async with plugin.gateway.database.begin() as conn:
            await conn.execute(
                webhooks.insert().values(
                    replay_key=replay_key,
                    reference=event.reference if event.reference and len(event.reference) <= 100 else None,
                    version=event.version,
                    code=event.code,
                    invoice_id=event.invoice_id[:32] or None,
                    received_at=utc_now(),
                )
            )
    except sa.exc.IntegrityError:
        return False
    return True


async def _forget(plugin: Plugin, replay_key: str) -> None:
    async with plugin.gateway.database.begin() as conn:
        await conn.execute(webhooks.delete().where(webhooks.c.replay_key == replay_key))
