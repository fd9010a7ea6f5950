"""The team's keys and usage, as the roles may see and change them.

- `GET /api/team/keys`: `keys.manage` (owner, admin) every team key on the team's account; `keys.own`
  (member) only the keys the caller made there. Who made each, its name, prefix, times, limit and where the
  limit stands (`spend`); never a secret. Pages by `cursor`.
- `DELETE /api/team/keys/{id}`: revoke (`keys.manage` any team key, `keys.own` one's own); every worker
  forgets it once the revocation commits.
- `PATCH /api/team/keys/{id}`: `limit_milli`, `limit_period` as in PATCH /api/keys (`keys.manage` only: a
  member never lifts a limit an admin set on their key).
- `GET /api/team/usage` (`usage.read`: owner, billing): the team's requests, and the account's totals this
  calendar month and last (`totals`, from credits' monthly roll-up); `GET /api/team/usage/mine`
  (`usage.own`): the caller's own requests on the team's account.

The keys are auth_keys' and the usage rows credits': both are asked through their services (ACCOUNTS,
CREDITS), never read from their tables. A key id that is not a team key of the caller's team (another
team's, the account's own user's, past 64 bits, or nobody's) is 404 `key_not_found`, as on /api/keys.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from edge.errors import NotFound
from edge.inputs import page_args, read_json
from edge.services import ACCOUNTS, CREDITS, KeySummary, MonthTotals, SpendLimit, UsageItem, UserProfile
from plugins.teams import answers
from plugins.teams.policy import permits
from plugins.teams.trail import note

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

    from plugins.teams.members import Membership
    from plugins.teams.routes import TeamApi

BIGINT_MAX = 2**63 - 1
MAX_PAGE = 200


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.strftime("%Y-%m-%dT%H:%M:%SZ")


def key_id(request: Request) -> int:
    """The path's key id, 0 (which no key has) past BIGINT."""
    value = int(request.path_params["key_id"])
    return value if value <= BIGINT_MAX else 0


def no_key() -> NotFound:
    # Another team's key, the account's own user's key and a key that does not exist answer alike.
    return NotFound("There is no team key with this id.", code="key_not_found")


def maker_json(profile: UserProfile | None) -> dict[str, Any] | None:
    return None if profile is None else {"user_id": profile.user_id, "name": profile.name, "email": profile.email}


def key_json(key: KeySummary, maker: UserProfile | None, spend: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "id": key.id,
        "name": key.name,
        "prefix": key.prefix,
        "scopes": list(key.scopes),
        "user_id": key.user_id,
        "user": maker_json(maker),
        "created_at": iso(key.created_at),
        "expires_at": iso(key.expires_at),
        "last_used_at": iso(key.last_used_at),
        "revoked_at": iso(key.revoked_at),
        "limit_milli": key.limit_milli,
        "limit_period": key.limit_period,
        "spend": spend,
    }


def usage_json(item: UsageItem) -> dict[str, Any]:
    found = asdict(item)
    found.pop("account_id")
    return found | {"created_at": iso(item.created_at)}


def month_json(month: MonthTotals) -> dict[str, Any]:
    return {"month": month.month.isoformat(), **asdict(month.totals)}


class TeamKeys:
    """The handlers; each finds the caller's membership through the team API and asks `permits` first."""

    def __init__(self, api: TeamApi) -> None:
        self.api = api
        self.plugin = api.plugin

    async def _scope(self, request: Request) -> tuple[Any, Membership, int | None]:
        """The caller, their membership, and whose keys they act on: None (every team key) for
        `keys.manage`, their own id for `keys.own`; 403 `team_forbidden` for a role with neither."""
        user, me = await self.api.caller(request)
        if permits(role=me.role, action="keys.manage"):
            return user, me, None
        if permits(role=me.role, action="keys.own"):
            return user, me, me.user_id
        raise answers.team_forbidden("keys.manage")

    async def _may_act_on(self, conn: AsyncConnection, me: Membership, key: KeySummary, action: str) -> None:
        """Someone else's key: the policy, with the key's maker's role as the target (an admin never acts
        on the owner's keys, as on the owner). Called inside the change's transaction, so a refusal rolls
        it back and no worker hears of it."""
        if key.user_id == me.user_id:
            return
        maker = await self.plugin.members.get(account_id=me.account_id, user_id=key.user_id or 0, conn=conn)
        if not permits(role=me.role, action=action, target_role=None if maker is None else maker.role):
            raise answers.team_forbidden(action)

    async def _shown(self, account_id: int, keys: list[KeySummary]) -> list[dict[str, Any]]:
        """The keys as the API shows them: who made each, and where a live key's limit stands in its period
        (`spend`; None for a key without a limit, or revoked)."""
        accounts = self.plugin.gateway.service(ACCOUNTS)
        makers = {p.user_id: p for p in await accounts.profiles({k.user_id for k in keys if k.user_id})}
        limited = [k for k in keys if k.limit_milli is not None and k.revoked_at is None]
        credits = self.plugin.gateway.maybe(CREDITS)
        spends: dict[int, dict[str, Any]] = {}
        if credits is not None and limited:
            wanted = [SpendLimit("key", k.id, k.limit_milli or 0, k.limit_period or "total") for k in limited]
            for spend in await credits.spends(account_id=account_id, limits=wanted):
                spends[spend.limit.scope_id] = {
                    "spent_milli": spend.spent_milli,
                    "held_milli": spend.held_milli,
                    "remaining_milli": spend.remaining_milli,
                    "period_start": None if spend.period_start is None else spend.period_start.isoformat(),
                    "resets_at": iso(spend.resets_at),
                }
        return [key_json(k, makers.get(k.user_id or 0), spends.get(k.id)) for k in keys]

    async def list_keys(self, request: Request) -> Response:
        _, me, whose = await self._scope(request)
        limit, cursor = page_args(request.query_params, default=50, max_page=MAX_PAGE)
        keys = await self.plugin.gateway.service(ACCOUNTS).team_keys(
            account_id=me.account_id, user_id=whose, before_id=cursor, limit=limit + 1
        )
        data = await self._shown(me.account_id, keys[:limit])
        next_cursor = str(keys[limit - 1].id) if len(keys) > limit else None
        return JSONResponse({"object": "list", "data": data, "next_cursor": next_cursor})

    async def revoke_key(self, request: Request) -> Response:
        user, me, whose = await self._scope(request)
        wanted = key_id(request)
        async with self.plugin.gateway.database.begin() as conn:
            change = await self.plugin.gateway.service(ACCOUNTS).revoke_team_key(
                account_id=me.account_id, key_id=wanted, user_id=whose, conn=conn
            )
            if change is None:
                raise no_key()
            await self._may_act_on(conn, me, change.after, "keys.manage")
            if change.before != change.after:
                target = f"key:{wanted}"
                actor = self.api.actor(request, user)
                await note(
                    conn, actor, "key_revoked", target=target, account_id=me.account_id, user_id=change.after.user_id
                )
        return JSONResponse({"key": (await self._shown(me.account_id, [change.after]))[0]})

    async def update_key(self, request: Request) -> Response:
        user, me = await self.api.caller(request)
        if not permits(role=me.role, action="keys.manage"):
            raise answers.team_forbidden("keys.manage")
        wanted = key_id(request)
        body = await read_json(request)
        async with self.plugin.gateway.database.begin() as conn:
            change = await self.plugin.gateway.service(ACCOUNTS).set_team_key_limit(
                account_id=me.account_id, key_id=wanted, fields=body, conn=conn
            )
            if change is None:
                raise no_key()
            if change.after.user_id == me.user_id and me.role != "owner":
                raise answers.team_forbidden("keys.manage")  # nobody lifts the limit set on their own key
            await self._may_act_on(conn, me, change.after, "keys.manage")
            before, after = change.before, change.after
            if before != after:
                await note(
                    conn,
                    self.api.actor(request, user),
                    "key_limit_changed",
                    target=f"key:{wanted}",
                    account_id=me.account_id,
                    user_id=after.user_id,
                    before={"limit_milli": before.limit_milli, "limit_period": before.limit_period},
                    after={"limit_milli": after.limit_milli, "limit_period": after.limit_period},
                )
        return JSONResponse({"key": (await self._shown(me.account_id, [after]))[0]})

    async def _usage(self, request: Request, *, action: str, mine: bool) -> Response:
        _, me = await self.api.caller(request)
        if not permits(role=me.role, action=action):
            raise answers.team_forbidden(action)
        limit, cursor = page_args(request.query_params, default=50, max_page=MAX_PAGE)
        credits = self.plugin.gateway.service(CREDITS)
        rows = await credits.recent_usage(
            account_id=me.account_id, limit=limit + 1, user_id=me.user_id if mine else None, before_id=cursor
        )
        body = {
            "object": "list",
            "account_id": me.account_id,
            "user_id": me.user_id if mine else None,
            "data": [usage_json(r) for r in rows[:limit]],
            "next_cursor": str(rows[limit - 1].id) if len(rows) > limit else None,
        }
        if not mine:
            months = await credits.account_months(me.account_id)
            body["totals"] = {"this_month": month_json(months.this_month), "last_month": month_json(months.last_month)}
        return JSONResponse(body)

    async def team_usage(self, request: Request) -> Response:
        return await self._usage(request, action="usage.read", mine=False)

    async def my_usage(self, request: Request) -> Response:
        return await self._usage(request, action="usage.own", mine=True)
