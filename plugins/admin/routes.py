"""The admins' API under /api/admin: the platform's overview (overview.py), the audit trail, users (search,
one user's page, ban and unban) and the CSV exports. Every route needs an admin's session: 401
`not_authenticated` without one, 403 `admin_required` for anyone else, 403 `csrf_failed` for a POST without
the session's CSRF token. A banned admin has no session (a ban ends them), so they are the 401.

Data other plugins own comes through their services: users and keys from ACCOUNTS, usage and ledger from
CREDITS, orders from BILLING; a service no enabled plugin provides leaves its part of the page empty
(`null`), never a 500.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from edge import audit
from edge.errors import GatewayError, NotFound
from edge.inputs import Form, query_form, read_json, text
from edge.services import ACCOUNTS, BILLING, CREDITS, GUARDS, TEAMS, PortalUser, UsageItem, UserProfile
from plugins.admin import answers, audit_rows, filters, overview

if TYPE_CHECKING:
    from plugins.admin import Plugin

NO_STORE = {"Cache-Control": "no-store"}
T = TypeVar("T")


def _repeated(request: Request) -> set[str]:
    params = request.query_params
    return {k for k in params if len(params.getlist(k)) > 1}


def _no_user() -> NotFound:
    return NotFound("No such user.", code="user_not_found")


class AdminApi:
    def __init__(self, plugin: Plugin) -> None:
        self.plugin = plugin

    async def _admin(self, request: Request) -> PortalUser:
        return await self.plugin.gateway.service(GUARDS).require_admin(request)

    async def audit(self, request: Request) -> Response:
        await self._admin(request)
        wanted = filters.audit_filter(request.query_params, repeated=_repeated(request))
        rows = await audit_rows.page(self.plugin.gateway.database, wanted)
        more = len(rows) == wanted.limit
        return JSONResponse(
            {"entries": [answers.audit_json(r) for r in rows], "next_cursor": int(rows[-1].id) if more else None},
            headers=NO_STORE,
        )

    async def overview(self, request: Request) -> Response:
        await self._admin(request)
        query_form(request.query_params, allowed=(), repeated=()).check()  # it takes none: 422 field_unknown
        return JSONResponse(await overview.build(self.plugin.gateway), headers=NO_STORE)

    async def users(self, request: Request) -> Response:
        await self._admin(request)
        gateway = self.plugin.gateway
        wanted = filters.user_query(request.query_params, repeated=_repeated(request), tiers=gateway.config.tiers)
        found = await gateway.service(ACCOUNTS).users(wanted)
        more = len(found) == wanted.limit
        return JSONResponse(
            {"users": [answers.user_json(u) for u in found], "next_cursor": found[-1].user_id if more else None},
            headers=NO_STORE,
        )

    async def user(self, request: Request) -> Response:
        await self._admin(request)
        gateway = self.plugin.gateway
        user_id = filters.user_id(str(request.path_params["user_id"]))
        accounts = gateway.service(ACCOUNTS)
        profile = await accounts.user(user_id) if user_id is not None else None
        if profile is None:
            raise _no_user()
        account_id = profile.account_id
        keys = await accounts.account_keys(account_id=account_id)
        credits, billing = gateway.maybe(CREDITS), gateway.maybe(BILLING)
        body = {
            "user": answers.user_json(profile),
            "account": {
                "id": account_id,
                "tier": profile.tier,
                "plan_expires_at": answers.iso(profile.plan_expires_at),
            },
            "keys": [answers.plain(k) for k in keys],
            "balance": None,
            "requests": None,
            "ledger": None,
            "orders": None,
            "team": None,
        }
        if credits is not None:
            balance = await credits.balance(account_id)
            body["balance"] = {
                "balance_milli": balance.balance_milli,
                "reserved_milli": balance.reserved_milli,
                "available_milli": balance.available_milli,
            }
            body["requests"] = [answers.plain(u) for u in await credits.recent_usage(account_id=account_id)]
            body["ledger"] = [answers.plain(e) for e in await credits.ledger_entries(account_id=account_id)]
        if billing is not None:
            body["orders"] = [answers.plain(o) for o in await billing.orders(account_id=account_id)]
        teams = gateway.maybe(TEAMS)
        standing = await teams.standing(user_id) if teams is not None and user_id is not None else None
        body["team"] = None if standing is None else answers.plain(standing)
        return JSONResponse(body, headers=NO_STORE)

    async def ban(self, request: Request) -> Response:
        return await self._set_ban(request, banned=True)

    async def unban(self, request: Request) -> Response:
        return await self._set_ban(request, banned=False)

    async def _set_ban(self, request: Request, *, banned: bool) -> Response:
        admin = await self._admin(request)
        gateway = self.plugin.gateway
        user_id = filters.user_id(str(request.path_params["user_id"]))
        form = Form(await read_json(request))
        form.only(("reason",))
        reason = form.take("reason", text(subject="reason", max_length=500))
        form.check()
        if user_id is None:
            raise _no_user()
        if banned and user_id == admin.user_id:
            raise GatewayError("An administrator cannot ban themselves.", status=409, code="cannot_ban_self")
        accounts, teams = gateway.service(ACCOUNTS), gateway.maybe(TEAMS)
        async with gateway.database.begin() as conn:
            changed = await (accounts.ban if banned else accounts.unban)(user_id=user_id, conn=conn)
            if changed is None:
                raise _no_user()
            # Read in the ban's transaction: what the answer says about the user's team is what was banned.
            standing = await teams.standing(user_id, conn=conn) if teams is not None else None
            team = None if standing is None else answers.ban_team(standing)
            details: dict[str, Any] = {"account_id": changed.account_id, "banned_at": answers.iso(changed.banned_at)}
            if team is not None:
                details["team"] = {k: team[k] for k in ("account_id", "role", "other_members")}
            await audit.Actor.of(admin, request).record(
                conn,
                "admin.ban_user" if banned else "admin.unban_user",
                f"user:{user_id}",
                reason=reason,
                details=details,
            )
        # The commit sent the invalidations on their way; these are awaited, so every worker's message is in
        # Redis before the admin sees the ban (a request sent after it finds the user's keys dropped).
        await accounts.invalidate_user(user_id)
        await accounts.invalidate_account(changed.account_id)
        body: dict[str, Any] = {"user": answers.user_json(changed)}
        if banned:
            body["team"] = team
        return JSONResponse(body, headers=NO_STORE)

    async def users_csv(self, request: Request) -> Response:
        await self._admin(request)
        gateway = self.plugin.gateway
        wanted = filters.user_query(
            request.query_params, repeated=_repeated(request), tiers=gateway.config.tiers, paged=False
        )
        accounts = gateway.service(ACCOUNTS)

        def fetch(before: int | None, size: int) -> Awaitable[list[UserProfile]]:
            return accounts.users(replace(wanted, before_id=before, limit=size))

        pages = _keyset(fetch, key=lambda user: user.user_id, size=self.plugin.settings.export_page_rows)
        return _csv(answers.USER_COLUMNS, pages, filename="users.csv")

    async def usage_csv(self, request: Request) -> Response:
        await self._admin(request)
        gateway = self.plugin.gateway
        wanted = filters.usage_range(request.query_params, repeated=_repeated(request))
        credits = gateway.maybe(CREDITS)
        if credits is None:
            raise NotFound("Usage is recorded by the credits plugin, which is not enabled.", code="no_usage")

        def fetch(after: int | None, size: int) -> Awaitable[list[UsageItem]]:
            return credits.usage_rows(since=wanted.since, until=wanted.until, after_id=after or 0, limit=size)

        pages = _keyset(fetch, key=lambda item: item.id, size=self.plugin.settings.export_page_rows)
        return _csv(answers.USAGE_COLUMNS, pages, filename="usage.csv")


async def _keyset(
    fetch: Callable[[int | None, int], Awaitable[list[T]]], *, key: Callable[[T], int], size: int
) -> AsyncIterator[list[T]]:
    """Pages of `size` rows from `fetch(cursor, size)`, each cursor the last row's `key`, until a short page."""
    cursor: int | None = None
    while True:
        page = await fetch(cursor, size)
        if page:
            yield page
        if len(page) < size:
            return
        cursor = key(page[-1])


def _csv(header: tuple[str, ...], pages: AsyncIterator[list[Any]], *, filename: str) -> Response:
    """A streamed CSV download: one keyset page in memory at a time."""

    async def lines() -> AsyncIterator[str]:
        yield answers.csv_lines([header])
        async for page in pages:
            yield answers.csv_lines(answers.values(row) for row in page)

    return StreamingResponse(
        lines(),
        media_type="text/csv; charset=utf-8",
        headers={**NO_STORE, "Content-Disposition": f'attachment; filename="{filename}"'},
    )


def build(plugin: Plugin) -> list[BaseRoute]:
    api = AdminApi(plugin)
    return [
        Route("/api/admin/audit", api.audit, methods=["GET"]),
        Route("/api/admin/overview", api.overview, methods=["GET"]),
        Route("/api/admin/users", api.users, methods=["GET"]),
        Route("/api/admin/users.csv", api.users_csv, methods=["GET"]),
        Route("/api/admin/usage.csv", api.usage_csv, methods=["GET"]),
        Route("/api/admin/users/{user_id}", api.user, methods=["GET"]),
        Route("/api/admin/users/{user_id}/ban", api.ban, methods=["POST"]),
        Route("/api/admin/users/{user_id}/unban", api.unban, methods=["POST"]),
    ]
