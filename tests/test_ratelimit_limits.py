"""Requests (and tokens) per minute per account, in-process and in Redis: headers, 429s, windows, cost."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import pytest
import redis.asyncio as aioredis

from edge.joblock import PREFIX as JOB_PREFIX
from plugins.ratelimit.answers import duration
from tests.conftest import TIERS, base_config
from tests.support.auth import TokenAuth, bearer

# These tests read the English answers: their callers are English-speaking unless a test says otherwise.
ENGLISH = TokenAuth.Settings(locale="en")

CHAT = {"model": "llama3.2:3b", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 2}
DURATION = re.compile(r"^(\d+ms|(\d+m)?\d+(\.\d{1,3})?s)$")


def config(
    ollama: Any,
    database_url: str,
    *,
    redis_url: str | None = None,
    tiers: dict[str, Any] | None = None,
    **settings: Any,
) -> dict[str, Any]:
    cfg = base_config(
        ollama_url=ollama.url,
        database_url=database_url,
        redis_url=redis_url,
        plugins=[{"name": "ratelimit", "settings": settings}],
    )
    if tiers is not None:
        cfg["tiers"] = tiers
    return cfg


@pytest.fixture(params=["memory", "redis"])
def storage(request: pytest.FixtureRequest) -> str | None:
    """Each test runs on in-process windows and on shared Redis windows."""
    if request.param == "memory":
        return None
    url: str = request.getfixturevalue("redis_url")
    return url


async def chat(gw: Any, headers: dict[str, str], body: dict[str, Any] | None = None) -> tuple[int, Any, Any]:
    async with gw.request("POST", "/v1/chat/completions", json=body or CHAT, headers=headers) as r:
        return r.status, r.headers, await r.json()


async def test_basic_account_gets_ten_a_minute_then_429_with_openai_headers(
    serve: Any, ollama: Any, sqlite_url: str, storage: str | None
) -> None:
    async with serve(config(ollama, sqlite_url, redis_url=storage), plugins=[TokenAuth(ENGLISH)]) as gw:
        for i in range(10):
            status, headers, _ = await chat(gw, bearer(1))
            assert status == 200
            assert headers["x-ratelimit-limit-requests"] == "10"
            assert headers["x-ratelimit-remaining-requests"] == str(9 - i)
            assert DURATION.match(headers["x-ratelimit-reset-requests"])
            assert "x-ratelimit-limit-tokens" not in headers
        status, headers, body = await chat(gw, bearer(1))
        served = len(ollama.served)
    assert status == 429
    assert body["error"]["code"] == "rate_limit_exceeded"
    assert body["error"]["type"] == "rate_limit_error"
    assert set(body["error"]) >= {"message", "type", "param", "code"}
    assert "10 requests per minute" in body["error"]["message"]
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert 1 <= int(headers["retry-after"]) <= 60
    assert served == 10  # the refused request never reached the upstream


async def test_all_keys_of_an_account_share_one_window_and_accounts_do_not(
    serve: Any, ollama: Any, sqlite_url: str, storage: str | None
) -> None:
    async with serve(config(ollama, sqlite_url, redis_url=storage), plugins=[TokenAuth(ENGLISH)]) as gw:
        statuses = [(await chat(gw, bearer(7, key=1 + i % 3)))[0] for i in range(11)]
        other, headers, _ = await chat(gw, bearer(8))
    assert statuses == [200] * 10 + [429]
    assert other == 200 and headers["x-ratelimit-remaining-requests"] == "9"


async def test_limits_follow_the_tier(serve: Any, ollama: Any, sqlite_url: str, storage: str | None) -> None:
    async with serve(config(ollama, sqlite_url, redis_url=storage), plugins=[TokenAuth(ENGLISH)]) as gw:
        limits = {
            tier: (await chat(gw, bearer(n, tier)))[1]["x-ratelimit-limit-requests"]
            for n, tier in enumerate(("basic", "pro", "enterprise"), start=1)
        }
    assert limits == {"basic": "10", "pro": "30", "enterprise": "60"}


async def test_models_list_counts_and_carries_the_headers(
    serve: Any, ollama: Any, sqlite_url: str, storage: str | None
) -> None:
    async with serve(config(ollama, sqlite_url, redis_url=storage), plugins=[TokenAuth(ENGLISH)]) as gw:
        async with gw.request("GET", "/v1/models", headers=bearer(3)) as r:
            assert r.status == 200
            assert r.headers["x-ratelimit-remaining-requests"] == "9"
        _, headers, _ = await chat(gw, bearer(3))
    assert headers["x-ratelimit-remaining-requests"] == "8"


async def test_no_account_means_no_limit(serve: Any, ollama: Any, sqlite_url: str) -> None:
    cfg = config(ollama, sqlite_url)
    cfg["server"]["open_access"] = True
    async with serve(cfg) as gw:
        statuses = [(await chat(gw, {}))[0] for _ in range(12)]
        _, headers, _ = await chat(gw, {})
    assert statuses == [200] * 12
    assert "x-ratelimit-limit-requests" not in headers


async def test_the_window_moves(serve: Any, ollama: Any, sqlite_url: str, storage: str | None) -> None:
    tiers = {"basic": {**TIERS["basic"], "requests_per_minute": 3}}
    cfg = config(ollama, sqlite_url, redis_url=storage, tiers=tiers, window_seconds=2)
    async with serve(cfg, plugins=[TokenAuth(ENGLISH)]) as gw:
        first = [(await chat(gw, bearer(1)))[0]]
        await asyncio.sleep(0.5)
        first += [(await chat(gw, bearer(1)))[0] for _ in range(2)]
        await asyncio.sleep(0.7)
        status, headers, body = await chat(gw, bearer(1))
        assert status == 429
        assert "per 2s" in body["error"]["message"]
        # The oldest request leaves the window in about 0.8s, the other two half a second later.
        assert headers["retry-after"] == "1"
        assert re.match(r"^\d{3}ms$", headers["x-ratelimit-reset-requests"])
        await asyncio.sleep(int(headers["x-ratelimit-reset-requests"][:-2]) / 1000 + 0.05)
        status, headers, _ = await chat(gw, bearer(1))
    assert first == [200, 200, 200]
    assert status == 200
    # One of the three left the window, this one took its place.
    assert headers["x-ratelimit-remaining-requests"] == "0"


async def test_a_burst_admits_exactly_the_limit(serve: Any, ollama: Any, sqlite_url: str, storage: str | None) -> None:
    async with serve(config(ollama, sqlite_url, redis_url=storage), plugins=[TokenAuth(ENGLISH)]) as gw:
        results = await asyncio.gather(*(chat(gw, bearer(5)) for _ in range(50)))
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [200] * 10 + [429] * 40


async def test_refusal_speaks_the_callers_language(serve: Any, ollama: Any, sqlite_url: str) -> None:
    async with serve(config(ollama, sqlite_url), plugins=[TokenAuth(ENGLISH)]) as gw:
        for _ in range(10):
            await chat(gw, bearer(1, locale="ar"))
        status, _, body = await chat(gw, bearer(1, locale="ar"))
    assert status == 429
    assert "بلغت حد الطلبات في باقة أساسي: 10 في الدقيقة" in body["error"]["message"]


TOKEN_TIERS = {"basic": {**TIERS["basic"], "tokens_per_minute": 100}}


async def test_tokens_per_minute_count_the_request_bound_at_admission(
    serve: Any, ollama: Any, sqlite_url: str, storage: str | None
) -> None:
    # "hello" is 5 bytes: 2 tokens of prompt, 4 for the message, 40 of completion budget: 46 per request.
    body = {**CHAT, "max_tokens": 40}
    cfg = config(ollama, sqlite_url, redis_url=storage, tiers=TOKEN_TIERS)
    async with serve(cfg, plugins=[TokenAuth(ENGLISH)]) as gw:
        first = await chat(gw, bearer(1), body)
        second = await chat(gw, bearer(1), body)
        third = await chat(gw, bearer(1), body)
        small = await chat(gw, bearer(1), {**CHAT, "max_tokens": 2})
    assert first[0] == 200 and first[1]["x-ratelimit-limit-tokens"] == "100"
    assert first[1]["x-ratelimit-remaining-tokens"] == "54"
    assert second[0] == 200 and second[1]["x-ratelimit-remaining-tokens"] == "8"
    assert third[0] == 429
    assert "Rate limit reached for tokens" in third[2]["error"]["message"]
    assert third[1]["x-ratelimit-remaining-tokens"] == "8"
    # A refused request takes nothing: the requests window still has room for the small one.
    assert third[1]["x-ratelimit-remaining-requests"] == "8"
    assert 1 <= int(third[1]["retry-after"]) <= 60
    assert small[0] == 200 and small[1]["x-ratelimit-remaining-tokens"] == "0"
    assert small[1]["x-ratelimit-remaining-requests"] == "7"


async def test_a_request_larger_than_the_token_limit_is_told_so(
    serve: Any, ollama: Any, sqlite_url: str, storage: str | None
) -> None:
    cfg = config(ollama, sqlite_url, redis_url=storage, tiers=TOKEN_TIERS)
    async with serve(cfg, plugins=[TokenAuth(ENGLISH)]) as gw:
        status, headers, body = await chat(gw, bearer(1), {**CHAT, "max_tokens": 500})
    assert status == 429
    assert "may use up to 506 tokens" in body["error"]["message"]
    assert headers["x-ratelimit-remaining-tokens"] == "100"


CONNECTION_SETUP = {"SELECT", "HELLO", "CLIENT", "AUTH", "PING"}


async def test_one_redis_round_trip_per_request(serve: Any, ollama: Any, sqlite_url: str, redis_url: str) -> None:
    db = int(redis_url.rsplit("/", 1)[1])
    seen: list[dict[str, Any]] = []
    monitor_client = aioredis.Redis.from_url(redis_url)

    async def watch(ready: asyncio.Event) -> None:
        async with monitor_client.monitor() as m:
            ready.set()
            async for command in m.listen():
                seen.append(command)

    async with serve(config(ollama, sqlite_url, redis_url=redis_url), plugins=[TokenAuth(ENGLISH)]) as gw:
        await chat(gw, bearer(1))  # loads the script once
        ready = asyncio.Event()
        watcher = asyncio.create_task(watch(ready))
        await ready.wait()
        for _ in range(5):
            await chat(gw, bearer(1))
        async with gw.request("GET", "/v1/models", headers=bearer(1)) as r:
            assert r.status == 200
        await asyncio.sleep(0.2)
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    await monitor_client.aclose()
    # The scheduled jobs' lock (edge.joblock) shares this Redis and may claim a run meanwhile, and a client
    # may (re)open a pooled connection (SELECT, HELLO, CLIENT SETINFO); neither is a request's round trip.
    ours = [
        c["command"].split()[0].upper()
        for c in seen
        if c.get("db") == db and c.get("client_type") != "lua" and JOB_PREFIX not in c["command"]
    ]
    assert [c for c in ours if c not in CONNECTION_SETUP] == ["EVALSHA"] * 6


def test_durations_are_written_the_way_openai_writes_them() -> None:
    assert duration(0) == "0s"
    assert duration(0.25) == "250ms"
    assert duration(12) == "12s"
    assert duration(8.64) == "8.64s"
    assert duration(60) == "1m0s"
    assert duration(59.9994) == "1m0s"
    assert duration(61.5) == "1m1.5s"


async def test_the_shared_window_lives_in_redis_under_the_account(
    serve: Any, ollama: Any, sqlite_url: str, redis_url: str
) -> None:
    async with serve(config(ollama, sqlite_url, redis_url=redis_url), plugins=[TokenAuth(ENGLISH)]) as gw:
        for _ in range(3):
            await chat(gw, bearer(42, key=2))
    client = aioredis.Redis.from_url(redis_url)
    try:
        entries = await client.lrange("resayil:ratelimit:account:42", 0, -1)
        ttl = await client.ttl("resayil:ratelimit:account:42")
    finally:
        await client.aclose()
    assert len(entries) == 3
    stamps = [float(e.split()[0]) for e in entries]
    assert stamps == sorted(stamps, reverse=True) and abs(stamps[0] - time.time()) < 5
    assert 55 <= ttl <= 61
