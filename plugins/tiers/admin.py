"""`PATCH /api/admin/accounts/{id}`: an admin sets an account's plan by hand, audited.

The body is `tier` and/or `plan_expires_at`, and an optional `reason` (1 to 500 characters). The change and
its one `tiers.set_plan` audit row (edge/audit.py: target `account:<id>`, details the plan before and after)
are one transaction. The reason is optional here, unlike for credits, bans and refunds: the route kept the
contract it had before it was audited, and the row's before and after already say exactly what changed.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from edge import audit
from edge.errors import NotFound
from edge.inputs import FieldError, Form, choice, instant, read_json, text
from edge.services import ACCOUNTS, GUARDS, Account

if TYPE_CHECKING:
    from edge.gateway import Gateway

log = logging.getLogger("resayil.tiers")
FIELDS = ("tier", "plan_expires_at", "reason")
# What both databases' DATETIME and a cached key's Unix time can hold and every client can print as four digits.
EARLIEST = datetime(1970, 1, 1)
LATEST = datetime(9999, 12, 31, 23, 59, 59)


def iso(moment: datetime | None) -> str | None:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment is not None else None


def changes(body: dict[str, Any], *, tiers: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The columns to set and the reason (None: none given) from the request body, or the one 422 naming
    every bad field."""
    form = Form(body)
    form.only(FIELDS)
    values: dict[str, Any] = {}
    if "tier" in body:
        values["tier"] = form.take("tier", choice(subject="tier", options=tuple(tiers)))
    if "plan_expires_at" in body:
        values["plan_expires_at"] = form.take(
            "plan_expires_at", instant(subject="plan_expires_at", earliest=EARLIEST, latest=LATEST)
        )
    reason = form.take("reason", text(subject="reason", max_length=500)) if "reason" in body else None
    if not values and not form.errors:
        form.fail("tier", FieldError("tier_required", "Send `tier`, `plan_expires_at` or both."))
    form.check()
    return values, reason


def plan(account: Account) -> dict[str, Any]:
    return {"tier": account.tier, "plan_expires_at": iso(account.plan_expires_at)}


def account_route(gateway: Gateway) -> Any:
    async def patch_account(request: Request) -> Response:
        admin = await gateway.service(GUARDS).require_admin(request)
        account_id = int(request.path_params["account_id"])
        values, reason = changes(await read_json(request), tiers=gateway.config.tiers)
        accounts = gateway.service(ACCOUNTS)
        async with gateway.database.begin() as conn:
            before = await accounts.account(account_id, conn=conn)
            # The accounts service sets the plan and, once this commits, makes every worker forget the
            # account's cached keys, so the new plan applies to the next request.
            account = None if before is None else await accounts.set_plan(account_id=account_id, conn=conn, **values)
            if before is None or account is None:
                raise NotFound(f"No account with id {account_id}.", code="account_not_found")
            await audit.Actor.of(admin, request).record(
                conn,
                "tiers.set_plan",
                f"account:{account_id}",
                reason=reason,
                details={"before": plan(before), "after": plan(account)},
            )
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
