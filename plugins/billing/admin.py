"""The admins' billing API under /api/admin: orders (filtered), revenue, refunds, manual orders and
marking them paid. Every route needs an admin's session (401 without one, 403 `admin_required` for a
user; CSRF on every POST), and every change writes its audit row (edge/audit.py) in its own transaction.

Orders are named by our reference (`ord_…`), never by row number; a path parameter that is not one is the
same 404 as a missing order.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from edge import audit
from edge.errors import GatewayError, NotFound
from edge.inputs import Form, integer, read_json, text
from edge.services import GUARDS
from plugins.billing import admin_rows, answers, manual_orders, order_rows, refunds
from plugins.billing.money import MAX_FILS
from plugins.billing.order_rows import Row

if TYPE_CHECKING:
    from plugins.billing import Plugin

_KEY = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


def refund_json(row: Row) -> dict[str, Any]:
    return {
        "id": int(row.id),
        "order_id": row.order_reference,
        "status": row.status,
        "amount_fils": int(row.amount_fils),
        "amount": answers.amount(int(row.amount_fils)),
        "credits_taken_milli": int(row.credits_taken_milli),
        "provider_refund_id": row.provider_refund_id,
        "reason": row.reason,
        "admin_user_id": None if row.actor_user_id is None else int(row.actor_user_id),
        "created_at": answers.iso(row.created_at),
        "updated_at": answers.iso(row.updated_at),
    }


def admin_order_json(row: Row, *, seller: dict[str, str], refunded_fils: int) -> dict[str, Any]:
    return answers.order_json(row, seller=seller) | {
        "account_id": int(row.account_id),
        "user_id": None if row.user_id is None else int(row.user_id),
        "payment_id": row.payment_id,
        "method": row.method,
        "manual": manual_orders.is_manual(row),
        "refunded_fils": refunded_fils,
    }


def _reference(request: Request) -> str:
    reference = str(request.path_params["reference"])
    if not order_rows.looks_like_reference(reference):
        raise NotFound("No such order.", code="order_not_found")
    return reference


def admin_routes(plugin: Plugin) -> list[BaseRoute]:
    seller = answers.both(plugin.settings.seller_ar, plugin.settings.seller_en)

    async def require_admin(request: Request) -> Any:
        return await plugin.gateway.service(GUARDS).require_admin(request)

    async def list_orders(request: Request) -> Response:
        await require_admin(request)
        params = request.query_params
        repeated = {k for k in params if len(params.getlist(k)) > 1}
        wanted = admin_rows.order_filter(params, repeated=repeated)
        rows = await admin_rows.page(plugin.gateway.database, wanted)
        more = len(rows) == wanted.limit
        return JSONResponse(
            {
                "orders": [admin_order_json(row, seller=seller, refunded_fils=fils) for row, fils in rows],
                "next_cursor": int(rows[-1][0].id) if rows and more else None,
            }
        )

    async def one_order(request: Request) -> Response:
        await require_admin(request)
        reference = _reference(request)
        async with plugin.gateway.database.connect() as conn:
            row = await order_rows.find(conn, reference=reference)
            found = await refunds.of_order(conn, reference=reference) if row is not None else []
        if row is None:
            raise NotFound("No such order.", code="order_not_found")
        counted = sum(int(r.amount_fils) for r in found if r.status in refunds.COUNTED)
        order = admin_order_json(row, seller=seller, refunded_fils=counted)
        return JSONResponse({"order": order, "refunds": [refund_json(r) for r in found]})

    async def revenue(request: Request) -> Response:
        await require_admin(request)
        first, last = admin_rows.day_range(request.query_params)
        return JSONResponse(
            await admin_rows.revenue(plugin.gateway.database, first=first, last=last, tz=plugin.gateway.tz)
        )

    async def refund(request: Request) -> Response:
        admin = await require_admin(request)
        reference = _reference(request)
        form = Form(await read_json(request))
        form.only(("amount_fils", "reason"))
        amount = form.take("amount_fils", integer(subject="amount_fils", low=1, high=MAX_FILS))
        reason = form.take("reason", text(subject="reason", max_length=500))
        key = request.headers.get("idempotency-key")
        if key is not None and not _KEY.match(key):
            form.fail("Idempotency-Key", "idempotency_key_invalid")
        form.check()
        ask = refunds.Ask(
            reference=reference,
            amount_fils=amount,
            reason=reason,
            admin_user_id=admin.user_id,
            ip=audit.request_ip(request),
            idempotency_key=key,
        )
        row, created = await refunds.request_refund(plugin, ask)
        return JSONResponse({"refund": refund_json(row)}, status_code=201 if created else 200)

    async def create_order(request: Request) -> Response:
        admin = await require_admin(request)
        body = await read_json(request)
        row = await manual_orders.create(plugin, admin=audit.Actor.of(admin, request), body=body)
        return JSONResponse({"order": admin_order_json(row, seller=seller, refunded_fils=0)}, status_code=201)

    async def mark_paid(request: Request) -> Response:
        admin = await require_admin(request)
        reference = _reference(request)
        body = await read_json(request)
        result = await manual_orders.mark_paid(
            plugin, reference=reference, admin=audit.Actor.of(admin, request), body=body
        )
        if result.status != "paid":
            raise GatewayError(
                f"The order is {result.status}; it was not credited.", status=409, code="order_not_payable"
            )
        order = admin_order_json(result.order, seller=seller, refunded_fils=0)
        return JSONResponse({"order": order, "credited": result.credited})

    return [
        Route("/api/admin/orders", list_orders, methods=["GET"]),
        Route("/api/admin/orders", create_order, methods=["POST"]),
        Route("/api/admin/orders/{reference}", one_order, methods=["GET"]),
        Route("/api/admin/orders/{reference}/refund", refund, methods=["POST"]),
        Route("/api/admin/orders/{reference}/mark-paid", mark_paid, methods=["POST"]),
        Route("/api/admin/revenue", revenue, methods=["GET"]),
    ]
