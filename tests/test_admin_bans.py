"""What a ban does to API keys, on SQLite and MariaDB, on two workers sharing Redis whose key caches would
otherwise remember a key for an hour: it stops the banned user's own keys, and the keys without a user on
their own account (such a key answers for that account's user), at once on every worker; it leaves other
accounts' keys and other team members' keys on a banned owner's team account working; banning a member stops
their team keys but not the team's. A banned user can make, change or gain no key by any path: a session
from before the ban, a PATCH, an invitation's accept, a team key, or a key made in a race with the ban."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import sqlalchemy as sa

from edge.services import ACCOUNTS, CREDITS
from plugins.auth_keys.tables import api_keys
from tests.support.admin import admin_config, chat
from tests.support.billing_admin import call
from tests.support.portal import LoggedIn, bearer, create_key, login, register_user
from tests.support.teams import join

HOUR = 3600


def config(ollama: Any, db_url: str, redis_url: str) -> dict[str, Any]:
    """The admin gateway with teams, each worker's key cache keeping a key for an hour: only the ban's
    invalidation can make a worker forget one."""
    cfg = admin_config(ollama, db_url, None, redis_url=redis_url)
    auth = next(p for p in cfg["plugins"] if p["name"] == "auth_keys")
    auth["settings"]["key_cache_seconds"] = HOUR
    cfg["plugins"].append({"name": "teams", "settings": {}})
    return cfg


async def fund(served: Any, user: LoggedIn) -> None:
    await served.gateway.service(CREDITS).grant(
        account_id=user.account_id, amount_milli=10**8, kind="grant", idempotency_key=f"fund-{user.account_id}"
    )


async def unowned_key(served: Any, account_id: int) -> str:
    """A key on the account made without a user (as an operator's tool makes them); its secret."""
    _, secret = await served.gateway.plugin("auth_keys").keys.create(
        account_id=account_id, user_id=None, name="no user", scopes=("read", "write"), expires_at=None
    )
    return str(secret)


async def statuses(served: Any, secrets: dict[str, str]) -> dict[str, int]:
    return {name: await chat(served, secret) for name, secret in secrets.items()}


async def until_statuses(served: Any, secrets: dict[str, str], wanted: dict[str, int]) -> None:
    """Within a second the worker answers each key with its wanted status (Redis carries the message)."""
    deadline = time.monotonic() + 1.0
    while (found := await statuses(served, secrets)) != wanted:
        assert time.monotonic() < deadline, (found, wanted)
        await asyncio.sleep(0.02)


async def ban(served: Any, admin: LoggedIn, user: LoggedIn, action: str = "ban") -> None:
    status, body = await call(served, "POST", f"/api/admin/users/{user.user_id}/{action}", admin, {"reason": "t"})
    assert status == 200 and body["user"]["banned"] is (action == "ban"), body


async def test_a_ban_stops_the_users_keys_and_their_accounts_keys_without_a_user_on_every_worker(
    serve: Any, ollama: Any, db_url: str, redis_url: str
) -> None:
    cfg = config(ollama, db_url, redis_url)
    async with serve(cfg) as first, serve(cfg) as second:
        admin, user, other = (
            await register_user(first, admin=True),
            await register_user(first),
            await register_user(first),
        )
        await fund(first, user)
        await fund(first, other)
        keys = {
            "own": await create_key(first, user),
            "unowned": await unowned_key(first, user.account_id),
            "others": await create_key(first, other),
            "others unowned": await unowned_key(first, other.account_id),
        }
        live = dict.fromkeys(keys, 200)
        assert await statuses(first, keys) == live and await statuses(second, keys) == live  # both cache them

        await ban(first, admin, user)
        stopped = live | {"own": 401, "unowned": 401}
        assert await statuses(first, keys) == stopped  # at once on the worker that banned
        await until_statuses(second, keys, stopped)
        for secret in (keys["own"], keys["unowned"]):
            async with second.request("GET", "/v1/account", headers=bearer(secret)) as r:
                assert (r.status, (await r.json())["error"]["code"]) == (401, "invalid_api_key")

        await ban(second, admin, user, "unban")
        assert await statuses(second, keys) == live
        await until_statuses(first, keys, live)


async def test_banning_a_team_owner_or_member_stops_only_that_users_keys_and_their_own_accounts(
    serve: Any, ollama: Any, db_url: str, redis_url: str
) -> None:
    cfg = config(ollama, db_url, redis_url)
    async with serve(cfg) as first, serve(cfg) as second:
        admin = await register_user(first, admin=True)
        owner = await register_user(first, tier="enterprise", locale="en")
        member, other_member = await register_user(first, locale="en"), await register_user(first, locale="en")
        await fund(first, owner)
        await fund(first, member)
        for user in (member, other_member):
            await join(first, owner, user, "member")
        team_keys = {}
        for name, user in (("member's", member), ("other member's", other_member)):
            status, made = await call(first, "POST", "/api/team/keys", user, {"name": name})
            assert status == 201, made
            team_keys[name] = made["secret"]
        keys = {
            "owner's": await create_key(first, owner),
            "team unowned": await unowned_key(first, owner.account_id),
            **team_keys,
            "member's own": await create_key(first, member),
            "member's own unowned": await unowned_key(first, member.account_id),
        }
        live = dict.fromkeys(keys, 200)
        assert await statuses(first, keys) == live and await statuses(second, keys) == live

        # The owner: their keys and the team account's keys without a user stop; the members' team keys,
        # which bill the same account, are their users' keys and go on.
        await ban(first, admin, owner)
        owner_banned = live | {"owner's": 401, "team unowned": 401}
        assert await statuses(first, keys) == owner_banned
        await until_statuses(second, keys, owner_banned)
        await ban(first, admin, owner, "unban")
        await until_statuses(second, keys, live)

        # A member: their team key and everything on their own account stop; the team's keys do not.
        await ban(second, admin, member)
        member_banned = live | {"member's": 401, "member's own": 401, "member's own unowned": 401}
        assert await statuses(second, keys) == member_banned
        await until_statuses(first, keys, member_banned)


async def test_a_banned_user_can_make_change_or_gain_no_key_by_any_path(
    serve: Any, ollama: Any, db_url: str, redis_url: str
) -> None:
    async with serve(config(ollama, db_url, redis_url)) as served:
        admin = await register_user(served, admin=True)
        owner = await register_user(served, tier="enterprise", locale="en")
        await fund(served, owner)
        user = await register_user(served, locale="en")
        await fund(served, user)
        await join(served, owner, user, "member")
        newcomer = await register_user(served, locale="en")
        status, invitation = await call(
            served, "POST", "/api/team/invitations", owner, {"email": newcomer.email, "role": "member"}
        )
        assert status == 201, invitation
        status, made = await call(served, "POST", "/api/keys", user, {"name": "before", "scopes": ["read", "write"]})
        assert status == 201
        key_path = f"/api/keys/{made['key']['id']}"

        await ban(served, admin, user)
        await ban(served, admin, newcomer)
        # Every session from before the ban is gone: each path that makes or changes a key is 401.
        attempts = [
            (user, "POST", "/api/keys", {"name": "after", "scopes": ["read", "write"]}),
            (user, "PATCH", key_path, {"limit_milli": None}),
            (user, "DELETE", key_path, None),
            (user, "POST", "/api/team/keys", {"name": "after"}),
            (newcomer, "POST", f"/api/team/invitations/{invitation['token']}/accept", None),
        ]
        for who, method, path, body in attempts:
            status, answer = await call(served, method, path, who, body)
            assert (status, answer["error"]["code"]) == (401, "not_authenticated"), (method, path, answer)
        for who in (user, newcomer):
            refused = await login(served, login=who.email, password=who.password)
            assert (refused[0], refused[1]["error"]["code"]) == (403, "account_banned")
        async with served.gateway.database.connect() as conn:
            rows = (await conn.execute(sa.select(api_keys).where(api_keys.c.user_id == user.user_id))).all()
        assert [(r.name, r.revoked_at, r.limit_milli) for r in rows] == [("before", None, None)]
        status, listed = await call(served, "GET", "/api/team/members", owner)
        assert newcomer.user_id not in {m["user_id"] for m in listed["data"]}

        # A request that passed its session check just before the ban committed may still make a key: on
        # the user's own account or, through the accounts service, on the team's. Neither ever answers.
        raced = [
            (
                await served.gateway.plugin("auth_keys").keys.create(
                    account_id=user.account_id, user_id=user.user_id, name="raced", scopes=("read",), expires_at=None
                )
            )[1],
            (
                await served.gateway.service(ACCOUNTS).issue_key(
                    account_id=owner.account_id, user_id=user.user_id, name="raced", scopes=("read", "write")
                )
            ).secret,
        ]
        for secret in raced:
            assert await chat(served, secret) == 401
            async with served.request("GET", "/v1/models", headers=bearer(secret)) as r:
                assert r.status == 401
