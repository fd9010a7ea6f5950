"""A failing local upstream: retried with backoff, spilled to cloud, answered 503 (or its own error), marked
down for a while when it shows itself unwell: refused connections, or several accounts' requests failing."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import pytest

from tests.support.auth import TokenAuth
from tests.support.failover import assert_released, chat, failover_config
from tests.support.recorder import Recorder


@pytest.fixture(params=["redis", "memory"])
def store(request: pytest.FixtureRequest) -> str | None:
    return request.getfixturevalue("redis_url") if request.param == "redis" else None


def closed_port_url() -> str:
    """A local address where nothing listens: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def test_a_failing_local_upstream_is_retried_then_pro_spills_to_cloud(
    serve: Any, ollama: Any, cloud: Any, sqlite_url: str, store: str | None
) -> None:
    ollama.settings.fail_status = 500
    config = failover_config(
        ollama_url=ollama.url, cloud_url=cloud.url, database_url=sqlite_url, redis_url=store, down_after_failures=100
    )
    watch = Recorder()
    async with serve(config, plugins=[TokenAuth(), watch]) as served:
        reply = await chat(served, "pro")
        assert (reply.status, reply.route, reply.fingerprint) == (200, "cloud", "fp_cloud")
        # A 500 may be the request's own doing: one retry, then the cloud.
        assert ollama.failures == 2 and len(cloud.served) == 1
        (ctx,) = await watch.wait_settled(1)
        assert ctx.extras["failover"].tried == ["ollama", "ollama", "cloud"]
        assert (ctx.route, ctx.multiplier, ctx.outcome) == ("cloud", 2, "ok")
        await assert_released(served)


async def test_a_busy_local_upstream_is_retried_then_basic_gets_503(
    serve: Any, ollama: Any, cloud: Any, sqlite_url: str, store: str | None
) -> None:
    ollama.settings.fail_status = 503  # busy says nothing about the request: every attempt is made
    config = failover_config(
        ollama_url=ollama.url,
        cloud_url=cloud.url,
        database_url=sqlite_url,
        redis_url=store,
        down_after_failures=100,
        retry_backoff_seconds=0.1,
        retry_backoff_max_seconds=0.4,
    )
    async with serve(config, plugins=[TokenAuth()]) as served:
        reply = await chat(served, "basic")
        assert reply.status == 503 and reply.code == "upstream_unavailable"
        assert int(reply.headers["retry-after"]) >= 1
        assert ollama.failures == 3 and cloud.served == []
        # Two jittered, growing waits of tenacity's: 0.1-0.2 s, then 0.2-0.3 s.
        assert 0.3 <= reply.elapsed < 1.0
        await assert_released(served)


async def test_refused_connections_are_retried_then_spilled_or_answered_503(
    serve: Any, cloud: Any, sqlite_url: str, store: str | None
) -> None:
    config = failover_config(
        ollama_url=closed_port_url(),
        cloud_url=cloud.url,
        database_url=sqlite_url,
        redis_url=store,
        down_after_failures=100,
    )
    watch = Recorder()
    async with serve(config, plugins=[TokenAuth(), watch]) as served:
        pro = await chat(served, "enterprise")
        assert (pro.status, pro.route, pro.fingerprint) == (200, "cloud", "fp_cloud")
        basic = await chat(served, "basic")
        assert basic.status == 503 and basic.code == "upstream_unavailable"
        first, second = await watch.wait_settled(2)
        assert first.extras["failover"].tried == ["ollama"] * 3 + ["cloud"]
        assert second.extras["failover"].tried == ["ollama"] * 3
        await assert_released(served)


async def test_pro_gets_the_upstreams_error_when_local_fails_it_and_the_cloud_cap_is_reached(
    serve: Any, ollama: Any, cloud: Any, sqlite_url: str, store: str | None
) -> None:
    ollama.settings.fail_status = 502
    config = failover_config(
        ollama_url=ollama.url,
        cloud_url=cloud.url,
        database_url=sqlite_url,
        redis_url=store,
        down_after_failures=100,
        cloud_daily_cap=0,
    )
    async with serve(config, plugins=[TokenAuth()]) as served:
        reply = await chat(served, "pro")
        assert reply.status == 502 and reply.code == "upstream_error"
        assert ollama.failures == 2 and cloud.served == []
        await assert_released(served)


async def test_an_upstream_that_fails_every_accounts_requests_is_marked_down_then_recovers(
    serve: Any, ollama: Any, cloud: Any, sqlite_url: str, store: str | None
) -> None:
    ollama.settings.fail_status = 500
    config = failover_config(
        ollama_url=ollama.url,
        cloud_url=cloud.url,
        database_url=sqlite_url,
        redis_url=store,
        down_after_accounts=3,
        down_cooldown_seconds=1.5,
    )
    async with serve(config, plugins=[TokenAuth()]) as served:
        # Each request is tried twice and answered with the upstream's error; one account, however many
        # of its requests fail, and a second account do not mark it down...
        for tier in ("basic", "basic", "basic", "basic:2"):
            failed = await chat(served, tier)
            assert (failed.status, failed.code) == (502, "upstream_error")
        async with served.request("GET", "/readyz") as resp:
            assert resp.status == 200
        # ...a third account's failing request calls for a probe, which fails too: it is marked down.
        first = await chat(served, "basic:3")
        assert (first.status, first.code) == (502, "upstream_error")
        await served.gateway.drain()  # the probe runs off the request path
        assert ollama.failures == 11  # ten attempts of five requests, and the probe

        # While down nobody waits on it: Basic is answered at once, Pro goes straight to cloud.
        basic = await chat(served, "basic")
        assert basic.status == 503 and basic.code == "upstream_unavailable" and basic.elapsed < 0.3
        assert 1 <= int(basic.headers["retry-after"]) <= 2
        pro = await chat(served, "pro")
        assert (pro.status, pro.route) == (200, "cloud")
        assert ollama.failures == 11 and ollama.arrivals == 11

        async with served.request("GET", "/readyz") as resp:
            ready = await resp.json()
            assert resp.status == 503
        assert ready["parts"]["queue:ollama"]["ok"] is False
        assert ready["parts"]["queue:ollama"]["state"] == "down"

        ollama.settings.fail_status = None
        await asyncio.sleep(1.6)
        again = await chat(served, "basic")
        assert (again.status, again.route, again.fingerprint) == (200, "local", "fp_local")
        async with served.request("GET", "/readyz") as resp:
            ready = await resp.json()
        assert ready["parts"]["queue:ollama"] == {
            "ok": True,
            "state": "up",
            "down_for_s": 0,
            "slots_in_use": 0,
            "queue_depth": 0,
        }
        await assert_released(served)


async def test_requests_waiting_on_an_upstream_that_goes_down_stop_waiting(
    serve: Any, cloud: Any, sqlite_url: str, store: str | None
) -> None:
    # Nothing listens: the holder's attempts are refused, and keeps its slot through its backoff waits, so
    # the others are still in line when the third refusal marks the upstream down.
    config = failover_config(
        ollama_url=closed_port_url(),
        cloud_url=cloud.url,
        database_url=sqlite_url,
        redis_url=store,
        down_after_failures=3,
        retry_backoff_seconds=0.3,
        retry_backoff_max_seconds=0.6,
        queue_max_wait_seconds=30,
    )
    async with serve(config, plugins=[TokenAuth()]) as served:
        started = time.monotonic()
        holder = asyncio.ensure_future(chat(served, "basic", "holder"))
        await asyncio.sleep(0.1)
        waiters = [asyncio.ensure_future(chat(served, "basic", f"w{i}")) for i in range(3)]
        replies = await asyncio.gather(holder, *waiters)
        assert [(r.status, r.code) for r in replies] == [(503, "upstream_unavailable")] * 4
        assert time.monotonic() - started < 3  # far from the 30 s longest wait
        async with served.request("GET", "/readyz") as resp:
            assert (await resp.json())["parts"]["queue:ollama"]["state"] == "down"
        await assert_released(served)


async def test_an_unreachable_redis_is_a_clear_503_not_a_crash(
    serve: Any, ollama: Any, cloud: Any, sqlite_url: str
) -> None:
    config = failover_config(
        ollama_url=ollama.url,
        cloud_url=cloud.url,
        database_url=sqlite_url,
        redis_url=closed_port_url().replace("http", "redis") + "/0",
    )
    async with serve(config, plugins=[TokenAuth()]) as served:
        for tier in ("basic", "pro"):
            reply = await chat(served, tier)
            assert reply.status == 503 and reply.code == "queue_unavailable"
            assert reply.headers["retry-after"] == "5"
        assert ollama.served == [] and cloud.served == []
