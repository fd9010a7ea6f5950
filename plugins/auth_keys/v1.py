"""/v1 endpoints for key holders: GET /v1/account and DELETE /v1/keys/current.

Balance and usage come from the `CREDITS` service when a plugin provides it (edge/services.py); without
one both are null.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from edge.context import Principal, RequestContext
from edge.errors import NotFound
from edge.services import CREDITS, Credits, SpendLimits, TeamKeyView
from plugins.auth_keys.clock import iso_unix

if TYPE_CHECKING:
    from plugins.auth_keys import Plugin


def endpoints(plugin: Plugin) -> dict[tuple[str, str], Any]:
    async def account(ctx: RequestContext) -> tuple[int, Any]:
        principal = ctx.principal
        assert principal is not None
        credits = plugin.gateway.maybe(CREDITS)
        # A team key (plugins/teams) shows its holder only what their role may see of the team's account.
        view = principal.fact(TeamKeyView)
        balance = usage = None
        if principal.account_id is not None and credits is not None:
            if view is None or view.balance:
                balance = dataclasses.asdict(await credits.balance(principal.account_id))
            if view is None or view.account_usage:
                usage = dataclasses.asdict(await credits.month_usage(principal.account_id))
            else:
                mine = await credits.month_usage(principal.account_id, user_id=view.user_id)
                usage = {**dataclasses.asdict(mine), "user_id": view.user_id}
        return 200, {
            "object": "account",
            "id": principal.account_id,
            "tier": principal.tier,
            "plan_expires_at": iso_unix(principal.plan_expires_at),
            "balance": balance,
            "usage": usage,
            "key": {
                "id": principal.key_id,
                "scopes": sorted(principal.scopes),
                "limit": await spend_limit(principal, credits, "key"),
            },
            # A team member's monthly limit (plugins/teams), which every key of theirs counts against.
            "member_limit": await spend_limit(principal, credits, "member"),
        }

    async def revoke_current(ctx: RequestContext) -> tuple[int, Any]:
        principal = ctx.principal
        assert principal is not None
        if principal.key_id is None or principal.account_id is None:
            raise NotFound("This call was not made with an API key.", code="key_not_found")
        key = await plugin.keys.revoke(key_id=principal.key_id, account_id=principal.account_id)
        await plugin.accounts.invalidate_key(principal.key_id)
        return 200, {"object": "api_key", "revoked": True, **(key or {"id": principal.key_id})}

    return {("GET", "/v1/account"): account, ("DELETE", "/v1/keys/current"): revoke_current}


async def spend_limit(principal: Principal, credits: Credits | None, kind: str) -> dict[str, Any] | None:
    """The caller's spend limit of `kind` ("key": the key's own; "member": its team member's) and where it
    stands in its period; None without one. Without a credits plugin nothing is spent, so all of it is left."""
    limits = principal.fact(SpendLimits)
    own = next((x for x in limits.limits if x.kind == kind), None) if limits is not None else None
    if own is None or principal.account_id is None:
        return None
    shown: dict[str, Any] = {"limit_milli": own.limit_milli, "period": own.period}
    if credits is None:
        nothing = {"spent_milli": 0, "held_milli": 0, "period_start": None, "resets_at": None}
        return {**shown, **nothing, "remaining_milli": own.limit_milli}
    spend = await credits.spend(account_id=principal.account_id, limit=own)
    return {
        **shown,
        "spent_milli": spend.spent_milli,
        "held_milli": spend.held_milli,
        "remaining_milli": spend.remaining_milli,
        "period_start": spend.period_start.isoformat() if spend.period_start else None,
        "resets_at": spend.resets_at.isoformat() + "Z" if spend.resets_at else None,
    }
