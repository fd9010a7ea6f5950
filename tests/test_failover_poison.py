"""One customer's input that makes the local model fail costs that customer their own request, never the
others' access to the model.

The fake's `poison` stands for an input that crashes Ollama's runner: any request whose message contains
it is answered 500 every time, whoever sends it; every other request is served. What a hostile customer
sends: the poison once, the poison as fast as the Basic plan allows (all ten of a minute at once), and the
poison one request after another. Meanwhile other customers' ordinary requests must all be served by the
local model, and /readyz must keep saying the local queue is up.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from plugins.failover.probe import PROBE_TEXT
from tests.support.auth import TokenAuth
from tests.support.failover import LOCAL_MODEL, as_tier, assert_released, chat, failover_config, served_texts
from tests.support.recorder import Recorder

POISON = "CRASH"


@pytest.fixture(params=["redis", "memory"])
def store(request: pytest.FixtureRequest) -> str | None:
    return request.getfixturevalue("redis_url") if request.param == "redis" else None


def poisoned_attempts(fake: Any) -> int:
    return sum(POISON in text for text in served_texts(fake))


async def queue_readiness(served: Any) -> tuple[int, dict[str, Any]]:
    async with served.request("GET", "/readyz") as resp:
        return resp.status, (await resp.json())["parts"]["queue:ollama"]


async def test_a_poisoned_request_is_tried_twice_and_answered_as_the_upstreams_error(
    serve: Any, ollama: Any, cloud: Any, sqlite_url: str, store: str | None
) -> None:
    ollama.settings.poison = POISON
    config = failover_config(ollama_url=ollama.url, cloud_url=cloud.url, database_url=sqlite_url, redis_url=store)
    watch = Recorder()
    async with serve(config, plugins=[TokenAuth(), watch]) as served:
        reply = await chat(served, "basic", f"please {POISON} now")
        assert (reply.status, reply.code, reply.body["error"]["type"]) == (502, "upstream_error", "server_error")
        assert reply.headers["content-type"] == "application/json"
        # One retry (a runner that crashed once for another reason is served the second time), no more.
        assert poisoned_attempts(ollama) == 2
        (ctx,) = await watch.wait_settled(1)
        assert ctx.extras["failover"].tried == ["ollama", "ollama"]
        # Streamed, the same: the upstream failed before anything was sent, so the answer is a JSON error.
        body = {"model": LOCAL_MODEL, "stream": True, "messages": [{"role": "user", "content": POISON}]}
        async with served.request("POST", "/v1/chat/completions", json=body, headers=as_tier("basic")) as resp:
            assert (resp.status, resp.headers["content-type"]) == (502, "application/json")
            assert (await resp.json())["error"]["code"] == "upstream_error"
        assert poisoned_attempts(ollama) == 4
        status, queue = await queue_readiness(served)
        assert (status, queue["state"]) == (200, "up")
        await assert_released(served)


async def test_one_customers_poisoned_requests_never_fail_another_customer(
    serve: Any, ollama: Any, cloud: Any, sqlite_url: str, store: str | None
) -> None:
    ollama.settings.poison = POISON
    ollama.settings.latency = 0.05  # ordinary requests take a moment, so the attack overlaps them
    config = failover_config(
        ollama_url=ollama.url, cloud_url=cloud.url, database_url=sqlite_url, redis_url=store, parallel=32
    )
    async with serve(config, plugins=[TokenAuth()]) as served:
        # The Basic plan's whole minute (10 requests): six at once, beside other customers' requests...
        attack = [asyncio.ensure_future(chat(served, "basic", f"{POISON} #{i}")) for i in range(6)]
        others = [chat(served, tier, f"ordinary #{i}") for i in range(2) for tier in ("basic:2", "pro", "enterprise")]
        during = asyncio.gather(*others)
        await asyncio.sleep(0.1)  # and after the first of them failed
        later = [chat(served, tier, f"later #{i}") for i in range(2) for tier in ("basic:2", "pro", "enterprise")]
        replies = [*await asyncio.gather(*attack), *await during, *await asyncio.gather(*later)]
        assert [(r.status, r.route) for r in replies[6:]] == [(200, "local")] * 12
        assert [(r.status, r.code) for r in replies[:6]] == [(502, "upstream_error")] * 6
        status, queue = await queue_readiness(served)
        assert (status, queue["state"]) == (200, "up")

        # ...then four more, one after another, each followed by someone else's request.
        for i in range(4):
            bad = await chat(served, "basic", f"{POISON} paced #{i}")
            status, queue = await queue_readiness(served)
            assert (status, queue["ok"], queue["state"]) == (200, True, "up")
            good = await chat(served, "basic:2", f"after #{i}")
            assert (good.status, good.route, good.fingerprint) == (200, "local", "fp_local")
            assert (bad.status, bad.code) == (502, "upstream_error")

        assert poisoned_attempts(ollama) == 2 * 10
        state = await served.gateway.plugin("failover").upstream_states()
        assert state["data"][0]["state"] == "up"
        await assert_released(served)


async def test_a_pro_customers_poisoned_request_spills_to_the_cloud_and_leaves_the_local_model_up(
    serve: Any, ollama: Any, cloud: Any, sqlite_url: str, store: str | None
) -> None:
    ollama.settings.poison = POISON
    config = failover_config(ollama_url=ollama.url, cloud_url=cloud.url, database_url=sqlite_url, redis_url=store)
    async with serve(config, plugins=[TokenAuth()]) as served:
        for i in range(5):
            reply = await chat(served, "pro", f"{POISON} #{i}")
            assert (reply.status, reply.route, reply.fingerprint) == (200, "cloud", "fp_cloud")
        assert poisoned_attempts(ollama) == 10 and len(cloud.served) == 5
        other = await chat(served, "basic", "ordinary")
        assert (other.status, other.route) == (200, "local")
        status, queue = await queue_readiness(served)
        assert (status, queue["state"]) == (200, "up")
        await assert_released(served)


async def test_poisoned_requests_from_many_accounts_call_for_a_probe_that_keeps_the_model_up(
    serve: Any, ollama: Any, cloud: Any, sqlite_url: str, store: str | None
) -> None:
    """Several accounts are cheap for an attacker: their failures alone must not mark the upstream down."""
    ollama.settings.poison = POISON
    ollama.settings.latency = 0.1  # the others' successes (which start the count again) come after the attack
    config = failover_config(
        ollama_url=ollama.url, cloud_url=cloud.url, database_url=sqlite_url, redis_url=store, parallel=32
    )
    async with serve(config, plugins=[TokenAuth()]) as served:
        for wave in range(3):
            attack = [chat(served, f"basic:{n}", f"{POISON} {wave}/{n}") for n in range(1, 7)]
            others = [chat(served, who, f"ordinary {wave}") for who in ("pro", "enterprise", "basic")]
            replies = await asyncio.gather(*attack, *others)
            assert [(r.status, r.route) for r in replies[6:]] == [(200, "local")] * 3
            assert [(r.status, r.code) for r in replies[:6]] == [(502, "upstream_error")] * 6
            await served.gateway.drain()
            status, queue = await queue_readiness(served)
            assert (status, queue["state"]) == (200, "up")
        # Each wave's failures called for one probe, which the model served.
        assert served_texts(ollama).count(PROBE_TEXT) == 3
        after = await chat(served, "basic:9", "ordinary")
        assert (after.status, after.route) == (200, "local")
        await assert_released(served)


async def test_timeouts_count_once_per_account_and_mark_the_upstream_down_only_across_accounts(
    serve: Any, ollama: Any, cloud: Any, sqlite_url: str, store: str | None
) -> None:
    ollama.settings.latency = 0.4  # a request that takes longer than the gateway waits for a first byte
    config = failover_config(
        ollama_url=ollama.url,
        cloud_url=cloud.url,
        database_url=sqlite_url,
        redis_url=store,
        parallel=8,
        probe_timeout_seconds=0.3,
    )
    config["timeouts"]["total_seconds"] = 0.15  # a whole answer may take up to this (first_byte_seconds: streams)
    async with serve(config, plugins=[TokenAuth()]) as served:
        replies = await asyncio.gather(*(chat(served, "basic", f"long #{i}") for i in range(5)))
        assert [(r.status, r.code) for r in replies] == [(504, "upstream_timeout")] * 5
        pair = await asyncio.gather(chat(served, "basic:2", "long"), chat(served, "basic", "long again"))
        assert [(r.status, r.code) for r in pair] == [(504, "upstream_timeout")] * 2
        status, queue = await queue_readiness(served)
        assert (status, queue["state"]) == (200, "up")
        # A third account's timing out too calls for a probe, which times out as well: the model runner is
        # not answering anyone, and it is marked down.
        third = await chat(served, "basic:3", "long")
        assert (third.status, third.code) == (504, "upstream_timeout")
        await served.gateway.drain()
        assert served_texts(ollama)[-1] == PROBE_TEXT
        status, queue = await queue_readiness(served)
        assert (status, queue["state"]) == (503, "down")
        refused = await chat(served, "basic:4", "short")
        assert (refused.status, refused.code) == (503, "upstream_unavailable")
        await assert_released(served)


class HangingUp:
    """Reads each request and closes the connection without answering, as Go's net/http does when a handler
    panics on an input: the request went out, so the failure may be the input's."""

    def __init__(self) -> None:
        self.requests = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            await reader.readuntil(b"\r\n\r\n")
            self.requests += 1
        writer.close()

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[str]:
        server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        async with server:
            yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def test_a_connection_dropped_after_the_request_went_out_counts_as_the_requests_own_failure(
    serve: Any, cloud: Any, sqlite_url: str, store: str | None
) -> None:
    upstream = HangingUp()
    async with upstream.serving() as url:
        config = failover_config(ollama_url=url, cloud_url=cloud.url, database_url=sqlite_url, redis_url=store)
        async with serve(config, plugins=[TokenAuth()]) as served:
            for i in range(4):
                reply = await chat(served, "basic", f"panics the server #{i}")
                assert (reply.status, reply.code) == (502, "upstream_unreachable")
            assert upstream.requests == 8  # tried twice each, not three times
            status, queue = await queue_readiness(served)
            assert (status, queue["state"]) == (200, "up")
            await assert_released(served)


async def test_a_broken_model_chosen_by_the_failing_requests_does_not_take_the_upstream_down(
    serve: Any, ollama: Any, cloud: Any, sqlite_url: str, store: str | None
) -> None:
    """The failing requests pick the model the probe asks first. When it fails too (a model too large to
    load, or broken), a model the upstream served lately gets the last word: served, the upstream is up."""
    ollama.settings.broken_models = ["qwen3:30b"]
    config = failover_config(
        ollama_url=ollama.url, cloud_url=cloud.url, database_url=sqlite_url, redis_url=store, parallel=8
    )
    async with serve(config, plugins=[TokenAuth()]) as served:
        first = await chat(served, "basic", "ordinary")
        assert (first.status, first.route) == (200, "local")
        attack = [chat(served, f"pro:{n}", "hello", model="qwen3:30b") for n in range(1, 5)]
        replies = await asyncio.gather(*attack)
        assert {r.status for r in replies} <= {200, 502}
        await served.gateway.drain()
        status, queue = await queue_readiness(served)
        assert (status, queue["state"]) == (200, "up")
        assert served_texts(ollama).count(PROBE_TEXT) >= 2  # the chosen model, then the one served lately
        after = await chat(served, "basic:9", "ordinary")
        assert (after.status, after.route) == (200, "local")
        await assert_released(served)
