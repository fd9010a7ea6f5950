"""`PATCH /api/admin/accounts/{id}`: an admin sets an account's plan by hand."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from edge.errors import NotFound
from edge.inputs import FieldError, Form, choice, instant, read_json
from edge.services import ACCOUNTS, GUARDS

if TYPE_CHECKING:
    from edge.gateway import Gateway

log = logging.getLogger("resayil.tiers")
FIELDS = ("tier", "plan_expires_at")
# What both databases' DATETIME and a cached key's Unix time can hold and every client can print as four digits.
EARLIEST = datetime(1970, 1, 1)
LATEST = datetime(9999, 12, 31, 23, 59, 59)


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
        admin = await gateway.service(GUARDS).require_admin(request)
        account_id = int(request.path_params["account_id"])
        values = changes(await read_json(request), tiers=gateway.config.tiers)
        # The accounts service sets the plan and makes every worker forget the account's cached keys, so
        # the new plan applies to the next request.
        account = await gateway.service(ACCOUNTS).set_plan(account_id=account_id, **values)
        if account is None:
            raise NotFound(f"No account with id {account_id}.", code="account_not_found")
        log.info(
            "plan set by admin",
            extra={
                "fields": {
                    "admin_user": admin.user_id,
                    "account": account_id,
                    "tier": account.tier,
                    "plan_expires_at": iso(account.plan_expires_at),
                }
            },
        )
        return JSONResponse({"id": account.id, "tier": account.tier, "plan_expires_at": iso(account.plan_expires_at)})

    return patch_account
