"""Bearer keys on /v1: the principal, scopes by method, /v1/account, /v1/keys/current, the key cache (its
cost, and revocations and tier changes reaching every worker), and last_used_at."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

import redis as redis_sync
import sqlalchemy as sa

from edge.context import Principal, RequestContext
from edge.gateway import Gateway
from edge.hookspecs import hookimpl
from edge.services import CREDITS, Balance, Grant, MonthUsage
from plugins.auth_keys.keys import secret_digest
from plugins.auth_keys.tables import api_keys
from tests.support.clock import ManualClock
from tests.support.portal import auth_config, bearer, create_key, register_user, set_tier

CHAT = {"model": "llama3.2:3b", "messages": [{"role": "user", "content": "مرحبا"}]}


async def call(served: Any, method: str, path: str, secret: str | None, **kwargs: Any) -> tuple[int, Any]:
    headers = bearer(secret) if secret else {}
    async with served.request(method, path, headers=headers, **kwargs) as resp:
        return resp.status, await resp.json()


def context(secret: str, method: str = "GET") -> RequestContext:
    return RequestContext(
        request_id="req_test",
        method=method,
        path="/v1/models",
        endpoint="models",
        headers={"authorization": f"Bearer {secret}"},
        client_ip="127.0.0.1",
        started=0.0,
    )


class FakeCredits:
    """Provides the `CREDITS` service with the two calls /v1/account reads (grant is never called)."""

    name = "credits"

    @hookimpl
    async def resayil_startup(self, gateway: Gateway) -> None:
        gateway.provide(CREDITS, self)

    async def grant(self, **kwargs: Any) -> Grant:
        raise AssertionError("not called")

    async def balance(self, account_id: int) -> Balance:
        return Balance(account_id=account_id, balance_milli=1_250_000, reserved_milli=2_000, available_milli=1_248_000)

    async def month_usage(self, account_id: int) -> MonthUsage:
        return MonthUsage(
            account_id=account_id,
            since=date(2025, 1, 1),
            requests=3,
            prompt_tokens=30,
            completion_tokens=12,
            cost_milli=42,
        )


async def test_the_principal_names_user_account_tier_key_and_scopes(ollama: Any, db_url: str, serve: Any) -> None:
    async with serve(auth_config(ollama, db_url)) as served:
        user = await register_user(served, tier="pro", locale="en", plan_expires_at=datetime(2030, 1, 1))
        secret = await create_key(served, user, scopes=("read",))
        status, keys = await call(served, "GET", "/v1/models", secret)
        assert status == 200 and keys["object"] == "list"
        plugin = served.gateway.plugin("auth_keys")
        principal = await plugin.resayil_authenticate(context(secret))
        key_id = (await call(served, "GET", "/v1/account", secret))[1]["key"]["id"]
        assert principal == Principal(
            account_id=user.account_id,
            user_id=user.user_id,
            tier="pro",
            key_id=key_id,
            scopes=frozenset({"read"}),
            role="user",
            locale="en",
            plan_expires_at=1893456000,
        )


async def test_unknown_revoked_expired_and_malformed_keys_get_one_401(ollama: Any, db_url: str, serve: Any) -> None:
    clock = ManualClock()
    async with serve(auth_config(ollama, db_url), clock=clock) as served:
        user = await register_user(served)
        live = await create_key(served, user)
        revoked = await create_key(served, user)
        soon = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
        expiring = await create_key(served, user, expires_at=soon)
        for secret in (live, revoked, expiring):
            assert (await call(served, "GET", "/v1/models", secret))[0] == 200
        key_ids = {k["prefix"]: k["id"] for k in (await _keys(served, user))}
        async with served.request("DELETE", f"/api/keys/{key_ids[revoked[:12]]}", headers=user.headers) as resp:
            assert resp.status == 200
        clock.advance(max(0.0, datetime.fromisoformat(soon).timestamp() - clock.time()) + 1.1)

        near_miss = live[:-1] + ("A" if live[-1] != "A" else "B")
        answers = []
        for secret in (revoked, expiring, near_miss, "rsk_" + "x" * 43, live + "x" * 200):
            for method, path, body in (("GET", "/v1/models", None), ("POST", "/v1/chat/completions", CHAT)):
                status, data = await call(served, method, path, secret, json=body)
                answers.append((status, data))
        assert {repr(a) for a in answers} == {repr(answers[0])}
        status, data = answers[0]
        assert status == 401
        assert (data["error"]["type"], data["error"]["code"]) == ("authentication_error", "invalid_api_key")
        # No key, or a credential of another kind, is refused the same way by the edge.
        for headers in ({}, {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": f"Bearer {live[4:]}"}):
            async with served.request("GET", "/v1/models", headers=headers) as resp:
                assert resp.status == 401
                assert (await resp.json())["error"]["code"] == "invalid_api_key"
        assert (await call(served, "GET", "/v1/models", live))[0] == 200


async def _keys(served: Any, user: Any) -> list[dict[str, Any]]:
    async with served.request("GET", "/api/keys", headers=user.headers) as resp:
        return list((await resp.json())["data"])


async def test_scopes_are_enforced_by_method(ollama: Any, db_url: str, serve: Any) -> None:
    async with serve(auth_config(ollama, db_url)) as served:
        user = await register_user(served)
        read_only = await create_key(served, user, scopes=("read",))
        write_only = await create_key(served, user, scopes=("write",))
        default = await create_key(served, user, scopes=("read", "write"))

        assert (await call(served, "GET", "/v1/models", read_only))[0] == 200
        assert (await call(served, "GET", "/v1/account", read_only))[0] == 200
        for secret, method, path, body, scope in (
            (read_only, "POST", "/v1/chat/completions", CHAT, "write"),
            (read_only, "POST", "/v1/embeddings", {"model": "qwen3-embedding:0.6b", "input": "x"}, "write"),
            (write_only, "GET", "/v1/models", None, "read"),
            (write_only, "GET", "/v1/account", None, "read"),
            (default, "DELETE", "/v1/keys/current", None, "delete"),
        ):
            status, data = await call(served, method, path, secret, json=body)
            assert status == 403, (method, path)
            assert (data["error"]["type"], data["error"]["code"]) == ("permission_error", "insufficient_scope")
            assert f"`{scope}`" in data["error"]["message"]
        status, data = await call(served, "POST", "/v1/chat/completions", write_only, json=CHAT)
        assert status == 200 and data["choices"][0]["message"]["content"]


async def test_delete_keys_current_revokes_the_calling_key(ollama: Any, db_url: str, serve: Any) -> None:
    async with serve(auth_config(ollama, db_url)) as served:
        user = await register_user(served)
        secret = await create_key(served, user, scopes=("read", "write", "delete"))
        other = await create_key(served, user)
        status, data = await call(served, "DELETE", "/v1/keys/current", secret)
        assert status == 200, data
        assert (data["object"], data["revoked"], data["prefix"]) == ("api_key", True, secret[:12])
        assert data["revoked_at"] is not None
        assert (await call(served, "GET", "/v1/models", secret))[0] == 401
        assert (await call(served, "GET", "/v1/models", other))[0] == 200
        listed = {k["prefix"]: k["revoked_at"] for k in await _keys(served, user)}
        assert listed[secret[:12]] is not None and listed[other[:12]] is None


async def test_v1_account_reports_tier_plan_balance_and_usage(ollama: Any, db_url: str, serve: Any) -> None:
    async with serve(auth_config(ollama, db_url)) as served:
        user = await register_user(served)
        secret = await create_key(served, user, scopes=("read",))
        status, data = await call(served, "GET", "/v1/account", secret)
        assert status == 200
        assert data == {
            "object": "account",
            "id": user.account_id,
            "tier": "basic",
            "plan_expires_at": None,
            "balance": None,
            "usage": None,
            "key": {"id": data["key"]["id"], "scopes": ["read"], "limit": None},
            "member_limit": None,
        }
        # A tier change reaches the cached principal at once.
        await set_tier(
            served, account_id=user.account_id, tier="enterprise", plan_expires_at=datetime(2031, 6, 30, 12, 0, 0)
        )
        status, data = await call(served, "GET", "/v1/account", secret)
        assert (data["tier"], data["plan_expires_at"]) == ("enterprise", "2031-06-30T12:00:00Z")

    async with serve(auth_config(ollama, db_url), plugins=[FakeCredits()]) as served:
        status, data = await call(served, "GET", "/v1/account", secret)
        assert status == 200
        assert data["balance"] == {
            "account_id": user.account_id,
            "balance_milli": 1_250_000,
            "reserved_milli": 2_000,
            "available_milli": 1_248_000,
        }
        assert data["usage"] == {
            "account_id": user.account_id,
            "since": "2025-01-01",
            "requests": 3,
            "prompt_tokens": 30,
            "completion_tokens": 12,
            "cost_milli": 42,
        }


async def test_a_cache_hit_costs_well_under_a_tenth_of_a_millisecond(ollama: Any, db_url: str, serve: Any) -> None:
    async with serve(auth_config(ollama, db_url)) as served:
        user = await register_user(served)
        secret = await create_key(served, user)
        plugin = served.gateway.plugin("auth_keys")
        ctx = context(secret)
        first = await plugin.resayil_authenticate(ctx)
        assert secret_digest(secret) in plugin.cache.entries
        rounds = 10_000
        started = time.perf_counter()
        for _ in range(rounds):
            principal = await plugin.resayil_authenticate(ctx)
        mean = (time.perf_counter() - started) / rounds
        assert principal is first
        assert mean < 50e-6, f"mean cache hit {mean * 1e6:.1f} µs"


async def test_revocation_reaches_every_worker_within_a_second(
    ollama: Any, db_url: str, redis_url: str, serve: Any
) -> None:
    config = auth_config(ollama, db_url, redis_url=redis_url)
    async with serve(config) as first, serve(config) as second:
        user = await register_user(first)
        secret = await create_key(first, user)
        assert (await call(second, "GET", "/v1/account", secret))[1]["tier"] == "basic"
        assert secret_digest(secret) in second.gateway.plugin("auth_keys").cache.entries

        # A tier change made by one worker reaches the other's cache.
        await set_tier(first, account_id=user.account_id, tier="pro")
        assert await _within_a_second(
            lambda: call(second, "GET", "/v1/account", secret), lambda answer: answer[1]["tier"] == "pro"
        )

        key_id = (await _keys(first, user))[0]["id"]
        async with first.request("DELETE", f"/api/keys/{key_id}", headers=user.headers) as resp:
            assert resp.status == 200
        assert await _within_a_second(
            lambda: call(second, "GET", "/v1/models", secret), lambda answer: answer[0] == 401
        )


async def _within_a_second(probe: Any, done: Any) -> bool:
    return await _within(1.0, probe, done)


async def _within(seconds: float, probe: Any, done: Any) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if done(await probe()):
            return True
        await asyncio.sleep(0.02)
    return False


async def test_revocation_is_immediate_in_a_single_process(ollama: Any, db_url: str, serve: Any) -> None:
    async with serve(auth_config(ollama, db_url, key_cache_seconds=3600)) as served:
        user = await register_user(served)
        secret = await create_key(served, user)
        assert (await call(served, "GET", "/v1/models", secret))[0] == 200
        key_id = (await _keys(served, user))[0]["id"]
        async with served.request("DELETE", f"/api/keys/{key_id}", headers=user.headers) as resp:
            assert resp.status == 200
        assert (await call(served, "GET", "/v1/models", secret))[0] == 401


async def _last_used(served: Any) -> datetime | None:
    async with served.gateway.database.connect() as conn:
        value: datetime | None = await conn.scalar(sa.select(api_keys.c.last_used_at))
    return value


async def _set_last_used(served: Any, value: datetime) -> None:
    async with served.gateway.database.begin() as conn:
        await conn.execute(sa.update(api_keys).values(last_used_at=value))


async def test_last_used_at_is_written_at_most_once_an_interval(ollama: Any, db_url: str, serve: Any) -> None:
    sentinel = datetime(2000, 1, 1)
    clock = ManualClock()
    async with serve(auth_config(ollama, db_url, last_used_interval_seconds=2), clock=clock) as served:
        user = await register_user(served)
        secret = await create_key(served, user)
        assert await _last_used(served) is None
        for _ in range(3):
            assert (await call(served, "GET", "/v1/models", secret))[0] == 200
        await served.gateway.drain()
        written = await _last_used(served)
        assert written is not None and abs((datetime.now(UTC).replace(tzinfo=None) - written).total_seconds()) < 5
        await _set_last_used(served, sentinel)
        assert (await call(served, "GET", "/v1/models", secret))[0] == 200
        await served.gateway.drain()
        assert await _last_used(served) == sentinel
        clock.advance(2.1)
        assert (await call(served, "GET", "/v1/models", secret))[0] == 200
        await served.gateway.drain()
        assert await _last_used(served) != sentinel


async def test_last_used_at_is_written_once_an_interval_across_workers(
    ollama: Any, db_url: str, redis_url: str, serve: Any
) -> None:
    sentinel = datetime(2000, 1, 1)
    config = auth_config(ollama, db_url, redis_url=redis_url)
    async with serve(config) as first, serve(config) as second:
        user = await register_user(first)
        secret = await create_key(first, user)
        assert (await call(first, "GET", "/v1/models", secret))[0] == 200
        await first.gateway.drain()
        assert await _last_used(first) is not None
        await _set_last_used(first, sentinel)
        # The second worker has not touched the key yet, but the first already wrote this minute.
        assert (await call(second, "GET", "/v1/models", secret))[0] == 200
        await second.gateway.drain()
        assert await _last_used(second) == sentinel


async def test_a_lost_subscription_is_restored_and_never_serves_stale_keys(
    ollama: Any, db_url: str, redis_url: str, serve: Any
) -> None:
    config = auth_config(ollama, db_url, redis_url=redis_url)
    async with serve(config) as first, serve(config) as second:
        user = await register_user(first)
        secret = await create_key(first, user)
        assert (await call(second, "GET", "/v1/models", secret))[0] == 200
        plugin = second.gateway.plugin("auth_keys")

        async def live() -> bool:
            return bool(plugin.bus.live)

        db = int(redis_url.rsplit("/", 1)[1])
        admin = redis_sync.Redis.from_url(redis_url)
        try:
            # Only this run's subscribers: the connections on our database that are subscribed.
            killed = [
                admin.client_kill_filter(_id=client["id"])
                for client in admin.client_list(_type="pubsub")
                if int(client["db"]) == db and int(client.get("sub", 0)) > 0
            ]
        finally:
            admin.close()
        assert len(killed) == 2
        assert await _within(0.5, live, lambda up: not up)
        assert secret_digest(secret) not in plugin.cache.entries
        # While down, keys are looked up every time instead of cached.
        assert (await call(second, "GET", "/v1/models", secret))[0] == 200
        assert secret_digest(secret) not in plugin.cache.entries
        assert await _within(3.0, live, bool)
        # Resubscribing emptied the cache, so nothing read before the outage is trusted.
        key_id = (await _keys(first, user))[0]["id"]
        async with first.request("DELETE", f"/api/keys/{key_id}", headers=user.headers) as resp:
            assert resp.status == 200
        assert await _within_a_second(
            lambda: call(second, "GET", "/v1/models", secret), lambda answer: answer[0] == 401
        )
