"""`PATCH /api/admin/accounts/{id}`: an admin sets an account's plan by hand."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from edge.errors import NotFound
from plugins.auth_keys.guards import require_admin
from plugins.auth_keys.inputs import FieldError, Form, read_json
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


def parse_moment(value: str) -> datetime:
    """ISO 8601 to the UTC-naive datetime the database keeps; without an offset it is taken as UTC.
    Raises ValueError outside `EARLIEST`..`LATEST`, including an offset that carries it past either end."""
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is not None:
        try:
            moment = moment.astimezone(UTC).replace(tzinfo=None)
        except OverflowError:
            raise ValueError(f"{value!r} is outside the years 1-9999 in UTC") from None
    moment = moment.replace(microsecond=0)
    if not EARLIEST <= moment <= LATEST:
        raise ValueError(f"{value!r} is outside {EARLIEST.isoformat()}..{LATEST.isoformat()}")
    return moment


def tier_field(tiers: dict[str, Any]) -> Any:
    def parse(value: Any) -> str:
        if not isinstance(value, str) or value not in tiers:
            raise FieldError("tier_invalid")
        return value

    return parse


def moment_field(value: Any) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_moment(value)
    except (TypeError, ValueError):
        raise FieldError("plan_expires_at_invalid") from None


def changes(body: dict[str, Any], *, tiers: dict[str, Any]) -> dict[str, Any]:
    """The columns to set from the request body, or 422 naming every bad field (auth_keys' shape)."""
    form = Form(body)
    for key in body:
        if key not in FIELDS:
            form.fail(key, "field_unknown")
    values: dict[str, Any] = {}
    if "tier" in body:
        values["tier"] = form.take("tier", tier_field(tiers))
    if "plan_expires_at" in body:
        values["plan_expires_at"] = form.take("plan_expires_at", moment_field)
    if not body:
        form.fail("tier", "tier_required")
    form.check()
    return values


def account_route(gateway: Gateway) -> Any:
    async def patch_account(request: Request) -> Response:
        admin = await require_admin(request)
        account_id = int(request.path_params["account_id"])
        values = changes(await read_json(request, limit=16 * 1024), tiers=gateway.config.tiers)
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
