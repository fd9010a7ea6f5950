"""The credits JSON API: a user's balance and usage (session), and admin adjustments with their audit trail."""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import AsyncIterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from edge import audit
from edge.errors import GatewayError, NotFound
from edge.inputs import Form, integer, page_args, read_json, text
from edge.services import ACCOUNTS, GUARDS, BalanceTooLow, Guards
from plugins.credits import pricing, reports
from plugins.credits.tables import USAGE_SHOWN

if TYPE_CHECKING:
    from plugins.credits import Plugin

log = logging.getLogger("resayil.credits")
MAX_PAGE = 200
MAX_DELTA_MILLI = 10**15
BIGINT_MAX = 2**63 - 1
ADJUSTMENT_FIELDS = ("delta_milli", "reason")
MESSAGES = {
    "delta_milli_invalid": "Must be a non-zero whole number of milli-credits (1 credit = 1000).",
    "delta_milli_out_of_range": "Must be a non-zero whole number of milli-credits (1 credit = 1000).",
    "reason_required": "Say why, in 1 to 500 characters; it is kept in the audit trail.",
    "reason_too_long": "Say why, in 1 to 500 characters; it is kept in the audit trail.",
}
_delta = integer(subject="delta_milli", low=-MAX_DELTA_MILLI, high=MAX_DELTA_MILLI)
_reason = text(subject="reason", max_length=500)
# The usage row as shown, with its cost in credits beside `cost_milli`.
_COST_AT = USAGE_SHOWN.index("cost_milli") + 1
CSV_FIELDS = (*USAGE_SHOWN[:_COST_AT], "credits", *USAGE_SHOWN[_COST_AT:])


def account_arg(request: Request) -> int:
    """The path's account id; 404 for one no account can have (past BIGINT)."""
    account_id = int(request.path_params["account_id"])
    if account_id > BIGINT_MAX:
        raise NotFound(f"No account with id {account_id}.", code="account_not_found")
    return account_id


def adjustment(body: dict[str, Any]) -> tuple[int, str]:
    """(delta_milli, reason) from an admin's request body, or the one 422 naming every bad field."""
    form = Form(body, messages=MESSAGES)
    form.only(ADJUSTMENT_FIELDS)
    delta = form.take("delta_milli", _delta)
    reason = form.take("reason", _reason)
    if delta == 0:
        form.fail("delta_milli", "delta_milli_invalid")
    form.check()
    return delta, reason


def routes(plugin: Plugin) -> list[BaseRoute]:
    def guards() -> Guards:
        return plugin.gateway.service(GUARDS)

    async def get_credits(request: Request) -> Response:
        user = await guards().require_user(request)
        state = await plugin.ledger.state(user.account_id)
        plan = pricing.plan_milli(plugin.gateway, user.tier)
        return JSONResponse(
            {**state, "plan_credits_milli": plan, "percent_remaining": pricing.percent(state["balance_milli"], plan)}
        )

    async def get_usage(request: Request) -> Response:
        user = await guards().require_user(request)
        limit, cursor = page_args(request.query_params, default=50, max_page=MAX_PAGE)
        db = plugin.gateway.database
        items, next_cursor = await reports.usage_page(db, account_id=user.account_id, limit=limit, before=cursor)
        days = await reports.daily_totals(
            db, account_id=user.account_id, today=datetime.now(plugin.tz).date(), days=plugin.settings.chart_days
        )
        return JSONResponse({"data": items, "next_cursor": next_cursor, "days": days})

    async def get_usage_csv(request: Request) -> Response:
        user = await guards().require_user(request)

        async def lines() -> AsyncIterator[bytes]:
            yield _csv_line(CSV_FIELDS)
            async for batch in reports.usage_batches(plugin.gateway.database, account_id=user.account_id):
                for item in batch:
                    yield _csv_line([_csv_value(item, name) for name in CSV_FIELDS])

        return StreamingResponse(
            lines(),
            media_type="text/csv; charset=utf-8",
            headers={"content-disposition": 'attachment; filename="usage.csv"'},
        )

    async def post_credits(request: Request) -> Response:
        admin = await guards().require_admin(request)
        account_id = account_arg(request)
        delta, reason = adjustment(await read_json(request))
        await _existing_account(plugin, account_id)
        # An Idempotency-Key makes a retried click one adjustment, not two.
        key = request.headers.get("idempotency-key", "")[:64] or os.urandom(12).hex()

        async def adjust(conn: AsyncConnection) -> dict[str, Any]:
            # The ledger row and its audit row commit together; a repeat (same key) writes neither.
            row = await plugin.grant(
                account_id=account_id,
                amount_milli=delta,
                kind="adjustment",
                reference=f"admin:{account_id}:{key}",
                actor=f"user:{admin.user_id}",
                reason=reason,
                conn=conn,
            )
            if row["created"]:
                await audit.Actor.of(admin, request).record(
                    conn,
                    "credits.adjust",
                    f"account:{account_id}",
                    reason=reason,
                    details={
                        "delta_milli": delta,
                        "balance_after_milli": row["balance_after_milli"],
                        "ledger_id": row["id"],
                    },
                )
            return row

        try:
            row = await plugin.ledger.transaction(adjust)
        except BalanceTooLow as exc:
            raise GatewayError(
                f"This would take the account below zero: only {pricing.credits_text(exc.available_milli)} "
                "credits are available (the rest is held by requests in flight).",
                status=409,
                code="balance_too_low",
                param="delta_milli",
                extra={"available_milli": exc.available_milli},
            ) from None
        created = row.pop("created")
        if not created and (row["amount_milli"], row["reason"]) != (delta, reason):
            raise GatewayError(
                "This Idempotency-Key was used for another adjustment of this account; send a new key for a new "
                "adjustment, or the same body to get the first one's result.",
                status=409,
                code="idempotency_key_reused",
                param="Idempotency-Key",
                extra={"ledger_id": row["id"]},
            )
        if created:
            log.info(
                "credits adjusted by admin",
                extra={
                    "fields": {
                        "admin_user": admin.user_id,
                        "account": account_id,
                        "delta_milli": delta,
                        "ledger_id": row["id"],
                    }
                },
            )
        return JSONResponse(row, status_code=201 if created else 200)

    async def get_ledger(request: Request) -> Response:
        await guards().require_admin(request)
        account_id = account_arg(request)
        limit, cursor = page_args(request.query_params, default=50, max_page=MAX_PAGE)
        await _existing_account(plugin, account_id)
        items, next_cursor = await reports.ledger_page(
            plugin.gateway.database, account_id=account_id, limit=limit, before=cursor
        )
        return JSONResponse(
            {"account": await plugin.ledger.state(account_id), "data": items, "next_cursor": next_cursor}
        )

    return [
        Route("/api/credits", get_credits, methods=["GET"]),
        Route("/api/usage", get_usage, methods=["GET"]),
        Route("/api/usage.csv", get_usage_csv, methods=["GET"]),
        Route("/api/admin/accounts/{account_id:int}/credits", post_credits, methods=["POST"]),
        Route("/api/admin/accounts/{account_id:int}/ledger", get_ledger, methods=["GET"]),
    ]


async def _existing_account(plugin: Plugin, account_id: int) -> None:
    if await plugin.gateway.service(ACCOUNTS).account(account_id) is None:
        raise NotFound(f"No account with id {account_id}.", code="account_not_found")


def _csv_value(item: dict[str, Any], name: str) -> Any:
    if name == "credits":
        return pricing.credits_text(int(item["cost_milli"])).replace(",", "")
    value = item[name]
    # A cell starting with = + - @ is a formula to a spreadsheet: quote it so it stays text.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@"):
        return "'" + value
    return "" if value is None else value


def _csv_line(values: Any) -> bytes:
    out = io.StringIO()
    csv.writer(out).writerow(values)
    return out.getvalue().encode()
