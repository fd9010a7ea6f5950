"""`PATCH /api/admin/accounts/{id}`: an admin sets an account's plan by hand."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from edge.errors import NotFound
from edge.inputs import FieldError, Form, choice, instant, read_json
from plugins.auth_keys.guards import require_admin
from plugins.auth_keys.tables import accounts

if TYPE_CHECKING:
    from edge.gateway import Gateway

log = logging.getLogger("resayil.tiers")
FIELDS = ("tier", "plan_expires_at")
# What both databases' DATETIME and a cached key's Unix time can hold and every client can print as four digits.
EARLIEST = datetime(1970, 1, 1)
LATEST = datetime(9999, 12, 31, 23, 59, 59)
# accounts.id is a signed 64-bit integer; SQLite refuses to even compare with a larger one.
MAX_ID = 2**63 - 1


def iso(moment: datetime | None) -> str | None:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment is not None else None


def changes(body: dict[str, Any], *, tiers: dict[str, Any]) -> dict[str, Any]:
    """The columns to set from the request body, or the one 422 naming every bad field."""
    form = Form(body)
    form.only(FIELDS)
    values: dict[str, Any] = {}
    if "tier" in body:
        values["tier"] = form.take("tier", choice(subject="tier", options=tuple(tiers)))
    if "plan_expires_at" in body:
        values["plan_expires_at"] = form.take(
            "plan_expires_at", instant(subject="plan_expires_at", earliest=EARLIEST, latest=LATEST)
        )
    if not body:
        form.fail("tier", FieldError("tier_required", "Send `tier`, `plan_expires_at` or both."))
    form.check()
    return values


def account_route(gateway: Gateway) -> Any:
    async def patch_account(request: Request) -> Response:
        admin = await require_admin(request)
        account_id = int(request.path_params["account_id"])
        values = changes(await read_json(request), tiers=gateway.config.tiers)
        async with gateway.database.begin() as conn:
            found = None
            if account_id <= MAX_ID:
                found = (await conn.execute(sa.select(accounts.c.id).where(accounts.c.id == account_id))).first()
            if found is None:
                raise NotFound(f"No account with id {account_id}.", code="account_not_found")
            await conn.execute(sa.update(accounts).where(accounts.c.id == account_id).values(**values))
            row = (
                await conn.execute(
                    sa.select(accounts.c.id, accounts.c.tier, accounts.c.plan_expires_at).where(
                        accounts.c.id == account_id
                    )
                )
            ).one()
        await invalidate(gateway, account_id)
        log.info(
            "plan set by admin",
            extra={
                "fields": {
                    "admin_user": admin.user_id,
                    "account": account_id,
                    "tier": row.tier,
                    "plan_expires_at": iso(row.plan_expires_at),
                }
            },
        )
        return JSONResponse({"id": row.id, "tier": row.tier, "plan_expires_at": iso(row.plan_expires_at)})

    return patch_account


async def invalidate(gateway: Gateway, account_id: int) -> None:
    """Make every worker forget the account's cached keys, so the new plan applies to the next request."""
    auth = gateway.plugin("auth_keys")
    if auth is not None:
        await auth.invalidate_account(account_id)
