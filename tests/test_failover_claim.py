"""The local queue's slot taken inside the rate limiter's script: one Redis round trip before the first byte
for both, with the order of refusals kept (429 never touches the queue, 402 comes before any wait)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis

from edge.context import RequestContext
from edge.errors import PaymentRequired
from edge.hookspecs import hookimpl
from plugins.ratelimit.windows import Limits, RedisWindows
from tests.support.auth import TokenAuth
from tests.support.failover import assert_released, chat, failover_config
from tests.support.recorder import Recorder


class NoCreditForBasic:
    """Stands in for the credits plugin: Basic callers have no credit left and get 402 from reserve."""

    name = "no_credit"

    @hookimpl
    async def resayil_reserve(self, ctx: RequestContext) -> None:
        assert ctx.principal is not None
        if ctx.principal.tier == "basic":
            raise PaymentRequired("Your credit balance is too low for this request.")


def claim_config(
    ollama: Any, cloud: Any, sqlite_url: str, redis_url: str, ratelimit: dict[str, Any] | None = None
) -> dict[str, Any]:
    config = failover_config(ollama_url=ollama.url, cloud_url=cloud.url, database_url=sqlite_url, redis_url=redis_url)
    config["plugins"] = [{"name": "ratelimit", "settings": ratelimit or {}}, *config["plugins"]]
    # A copy: the tiers are the tests' shared example (conftest.TIERS).
    config["tiers"] = {**config["tiers"], "basic": {**config["tiers"]["basic"], "requests_per_minute": 1}}
    return config


@pytest.fixture
def script_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The Lua script calls (EVALSHA, and EVAL after a script cache miss) this process sends to any Redis from
    now on. Counted at the client, not from Redis's INFO, which counts every other client of the server too."""
    calls: list[str] = []
    send = aioredis.Redis.execute_command

    async def counted(self: aioredis.Redis, *args: Any, **options: Any) -> Any:
        if str(args[0]).upper() in ("EVALSHA", "EVAL"):
            calls.append(str(args[0]))
        return await send(self, *args, **options)

    monkeypatch.setattr(aioredis.Redis, "execute_command", counted)
    return calls


@pytest.fixture
def slow_ollama(ollama: Any) -> Any:
    ollama.settings.parallel = 1
    ollama.settings.latency = 0.4
    return ollama


@pytest.mark.parametrize("same_redis", [True, False], ids=["gateway-redis", "own-redis"])
async def test_the_window_and_the_slot_share_one_script_call_on_the_gateways_redis(
    serve: Any, ollama: Any, cloud: Any, sqlite_url: str, redis_url: str, same_redis: bool, script_calls: list[str]
) -> None:
    """Window and slot in one call, then the slot's release: two script calls a request. With the limiter
    on a Redis of its own (here: the same one under another name) the two cannot share a script: three
    calls, and the same answers."""
    own = None if same_redis else {"redis_url": redis_url.replace("127.0.0.1", "localhost")}
    config = claim_config(ollama, cloud, sqlite_url, redis_url, own)
    async with serve(config, plugins=[TokenAuth(), watch := Recorder()]) as served:
        await chat(served, "pro")  # loads the scripts
        await watch.wait_settled(1)
        before = len(script_calls)
        replies = [await chat(served, "pro", f"n={i}") for i in range(3)]
        await watch.wait_settled(4)
        calls = len(script_calls) - before

        assert [(r.status, r.route) for r in replies] == [(200, "local")] * 3
        assert [r.headers["x-ratelimit-remaining-requests"] for r in replies] == ["28", "27", "26"]
        assert calls == (6 if same_redis else 9)
        await assert_released(served)


async def test_a_request_the_window_refuses_never_takes_a_place_in_line(
    serve: Any, slow_ollama: Any, cloud: Any, sqlite_url: str, redis_url: str
) -> None:
    """The one slot is busy and a Basic caller waits for it; the same caller's next request is over its
    limit of one a minute and gets 429 at once, without joining the line or touching the slot."""
    async with serve(claim_config(slow_ollama, cloud, sqlite_url, redis_url), plugins=[TokenAuth()]) as served:
        failover = served.gateway.plugin("failover")
        busy = asyncio.ensure_future(chat(served, "pro", "busy"))
        await asyncio.sleep(0.1)
        waiting = asyncio.ensure_future(chat(served, "basic", "waits"))
        await asyncio.sleep(0.1)
        refused = await chat(served, "basic", "over the limit")
        snapshot = await failover.slots.snapshot(upstream="ollama")

        assert (refused.status, refused.code) == (429, "rate_limit_exceeded")
        assert refused.elapsed < 0.2
        assert (snapshot.in_use, snapshot.waiting) == (1, {"basic": 1})
        assert [(r.status, r.route) for r in await asyncio.gather(busy, waiting)] == [(200, "local")] * 2
        await assert_released(served)


async def test_a_request_without_credit_is_refused_before_it_waits_and_gives_its_place_back(
    serve: Any, slow_ollama: Any, cloud: Any, sqlite_url: str, redis_url: str
) -> None:
    """The window admits the request and the same script puts it in line behind the busy slot; its credits
    hold then refuses it with 402 at once, not after the wait, and its place is given back."""
    plugins = [TokenAuth(), NoCreditForBasic()]
    async with serve(claim_config(slow_ollama, cloud, sqlite_url, redis_url), plugins=plugins) as served:
        busy = asyncio.ensure_future(chat(served, "pro", "busy"))
        await asyncio.sleep(0.1)
        refused = await chat(served, "basic", "no credit")
        snapshot = await served.gateway.plugin("failover").slots.snapshot(upstream="ollama")

        assert (refused.status, refused.code) == (402, "insufficient_quota")
        assert refused.elapsed < 0.2
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
        assert (snapshot.in_use, snapshot.waiting) == (1, {})
        assert (await busy).status == 200
        await assert_released(served)


async def test_a_claim_whose_script_fails_is_abandoned_not_accepted(redis_url: str) -> None:
    """When the call fails, whether the claim ran is unknown: its plugin is told to give it back."""
    from edge.claims import RedisClaim

    told: list[str] = []
    windows = RedisWindows(url=redis_url, window_seconds=60, timeout=0.5, key_prefix="test:claim")
    broken = RedisClaim(
        lua="local function claim(KEYS, ARGV) return redis.call('NO_SUCH_COMMAND') end\n",
        keys=["test:claim:x"],
        args=[],
        accept=lambda reply: told.append(f"accept {reply}"),
        abandon=lambda: told.append("abandon"),
    )
    try:
        with pytest.raises(aioredis.ResponseError):
            await windows.admit(Limits("1", 5, None, 0), broken)
        assert told == ["abandon"]
        told.clear()
        works = RedisClaim(
            lua="local function claim(KEYS, ARGV) return {'took', ARGV[1]} end\n",
            keys=[],
            args=["it"],
            accept=lambda reply: told.append(f"accept {reply}"),
            abandon=lambda: told.append("abandon"),
        )
        decision = await windows.admit(Limits("2", 1, None, 0), works)
        assert decision.admitted and told == ["accept [b'took', b'it']"]
        told.clear()
        decision = await windows.admit(Limits("2", 1, None, 0), works)
        assert not decision.admitted and told == []
    finally:
        await windows.close()


async def test_a_trylast_authorize_listed_before_the_limiter_refuses_before_any_slot_is_claimed(
    serve: Any, ollama: Any, cloud: Any, sqlite_url: str, redis_url: str
) -> None:
    """pluggy runs `trylast` implementations in the reverse of the config's order, so with the window in
    authorize this refusal ran after the window's script had taken the one local slot, and nothing gave it
    back. The window now runs in admit, after every authorize: the refused request never claims, and the
    next caller gets the slot at once."""
    config = claim_config(ollama, cloud, sqlite_url, redis_url)
    late = {"name": "late_refusal", "module": "tests.support.late_refusal", "settings": {"refuse_tier": "basic"}}
    config["plugins"] = [late, *config["plugins"]]
    config["plugins"][-1]["settings"]["queue_max_wait_seconds"] = 1.0
    async with serve(config, plugins=[TokenAuth()]) as served:
        refused = await chat(served, "basic", "refused late")
        failover = served.gateway.plugin("failover")
        snapshot = await failover.slots.snapshot(upstream="ollama")
        assert (refused.status, refused.code) == (403, "late_refusal")
        assert (snapshot.in_use, snapshot.waiting) == (0, {})
        assert "x-ratelimit-remaining-requests" not in refused.headers
        after = await chat(served, "pro", "next")
        assert (after.status, after.route) == (200, "local")
        await assert_released(served)
