"""The local queue through the gateway: one slot at the fake Ollama, tier priority, spill-over to cloud."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.support.auth import TokenAuth
from tests.support.failover import (
    CLOUD_MODEL,
    LOCAL_MODEL,
    assert_released,
    chat,
    failover_config,
    served_texts,
    staggered,
)
from tests.support.recorder import Recorder


@pytest.fixture(params=["redis", "memory"])
def store(request: pytest.FixtureRequest) -> str | None:
    """Run each test with the queue in Redis and in-process (the embedded default)."""
    return request.getfixturevalue("redis_url") if request.param == "redis" else None


@pytest.fixture
def slow_ollama(ollama: Any) -> Any:
    ollama.settings.parallel = 1
    ollama.settings.latency = 0.3
    return ollama


def config_for(ollama: Any, cloud: Any, sqlite_url: str, store: str | None, **settings: Any) -> dict[str, Any]:
    return failover_config(
        ollama_url=ollama.url, cloud_url=cloud.url, database_url=sqlite_url, redis_url=store, **settings
    )


async def test_pro_requests_spill_to_cloud_when_more_than_three_wait(
    serve: Any, slow_ollama: Any, cloud: Any, sqlite_url: str, store: str | None
) -> None:
    watch = Recorder()
    async with serve(config_for(slow_ollama, cloud, sqlite_url, store), plugins=[TokenAuth(), watch]) as served:
        replies = await asyncio.gather(*(chat(served, "pro", f"n={i}") for i in range(8)))

        assert [r.status for r in replies] == [200] * 8
        local = [r for r in replies if r.route == "local"]
        spilled = [r for r in replies if r.route == "cloud"]
        # One runs, four wait (not more than 3 ahead of the fourth), the other three find 4 waiting: cloud.
        assert (len(local), len(spilled)) == (5, 3)
        assert {r.fingerprint for r in local} == {"fp_local"}
        assert {r.fingerprint for r in spilled} == {"fp_cloud"}
        assert len(slow_ollama.served) == 5 and slow_ollama.max_in_flight_seen == 1
        assert [entry["model"] for entry in cloud.served] == [CLOUD_MODEL] * 3
        # Spilled answers come at once; local ones queue behind the single slot (5 x 0.3 s).
        assert max(r.elapsed for r in spilled) < 0.3
        assert max(r.elapsed for r in local) > 1.2

        settled = await watch.wait_settled(8)
        assert sorted((c.route, c.multiplier, c.upstream_model) for c in settled) == sorted(
            [("cloud", 2, CLOUD_MODEL)] * 3 + [("local", 1, LOCAL_MODEL)] * 5
        )
        budget = await served.gateway.plugin("failover").budget.status()
        assert (budget["used"], budget["cap"]) == (3, 500)
        await assert_released(served)


async def test_basic_never_spills_and_is_served_in_arrival_order(
    serve: Any, slow_ollama: Any, cloud: Any, sqlite_url: str, store: str | None
) -> None:
    slow_ollama.settings.latency = 0.15
    async with serve(config_for(slow_ollama, cloud, sqlite_url, store), plugins=[TokenAuth()]) as served:
        # 50 ms apart: a pause of the test's own loop (it serves the gateway too) must not swap two arrivals.
        replies = await staggered([chat(served, "basic", f"b{i}") for i in range(8)], gap=0.05)

        assert [(r.status, r.route, r.fingerprint) for r in replies] == [(200, "local", "fp_local")] * 8
        assert served_texts(slow_ollama) == [f"b{i}" for i in range(8)]
        # Each freed slot goes to the next in line at once (a wake-up, not the 1 s poll): 8 x 0.15 s.
        assert max(r.elapsed for r in replies) < 8 * 0.15 + 0.5
        assert cloud.served == [] and slow_ollama.max_in_flight_seen == 1
        await assert_released(served)


async def test_enterprise_then_pro_are_served_before_basic_that_arrived_first(
    serve: Any, slow_ollama: Any, cloud: Any, sqlite_url: str, store: str | None
) -> None:
    # A deep spill threshold keeps everyone local, so only the order of the line is under test.
    config = config_for(slow_ollama, cloud, sqlite_url, store, spill_depth=50)
    async with serve(config, plugins=[TokenAuth()]) as served:
        calls = [chat(served, "basic", f"b{i}") for i in range(3)]
        calls += [chat(served, "pro", f"p{i}") for i in range(2)]
        calls += [chat(served, "enterprise", f"e{i}") for i in range(2)]
        replies = await staggered(calls)

        assert [r.status for r in replies] == [200] * 7
        # b0 had the slot already; the rest were waiting when it freed.
        assert served_texts(slow_ollama) == ["b0", "e0", "e1", "p0", "p1", "b1", "b2"]
        await assert_released(served)


async def test_queue_depth_by_tier_is_visible_while_requests_wait(
    serve: Any, slow_ollama: Any, cloud: Any, sqlite_url: str, store: str | None
) -> None:
    config = config_for(slow_ollama, cloud, sqlite_url, store, spill_depth=50)
    async with serve(config, plugins=[TokenAuth()]) as served:
        plugin = served.gateway.plugin("failover")
        holder = asyncio.ensure_future(chat(served, "basic", "holder"))
        await asyncio.sleep(0.05)  # it holds the one slot; the others wait
        tasks = [holder] + [asyncio.ensure_future(chat(served, t, t)) for t in ("basic", "basic", "pro", "enterprise")]
        await asyncio.sleep(0.1)
        (ollama_state,) = [u for u in (await plugin.upstream_states())["data"] if u["name"] == "ollama"]
        assert ollama_state == {
            "name": "ollama",
            "kind": "local",
            "state": "up",
            "down_for_s": 0,
            "parallel": 1,
            "slots_in_use": 1,
            "queue_depth": 4,
            "queue_by_tier": {"basic": 2, "pro": 1, "enterprise": 1},
        }
        assert [r.status for r in await asyncio.gather(*tasks)] == [200] * 5
        await assert_released(served)


async def test_a_request_waiting_longer_than_the_maximum_gets_503_and_leaves_the_line(
    serve: Any, slow_ollama: Any, cloud: Any, sqlite_url: str, store: str | None
) -> None:
    slow_ollama.settings.latency = 1.5
    config = config_for(slow_ollama, cloud, sqlite_url, store, queue_max_wait_seconds=0.4)
    watch = Recorder()
    async with serve(config, plugins=[TokenAuth(), watch]) as served:
        plugin = served.gateway.plugin("failover")
        first = asyncio.ensure_future(chat(served, "basic", "first"))
        await asyncio.sleep(0.1)
        late = await chat(served, "basic", "late")

        assert late.status == 503 and late.code == "queue_timeout"
        assert late.headers["retry-after"] == "5"
        assert set(late.body["error"]) >= {"message", "type", "param", "code"}
        assert 0.35 < late.elapsed < 1.2
        snap = await plugin.slots.snapshot(upstream="ollama")
        assert (snap.in_use, snap.waiting) == (1, {})  # the first still runs; nobody waits any more
        assert (await first).status == 200
        assert served_texts(slow_ollama) == ["first"]
        assert sorted(c.outcome for c in await watch.wait_settled(2)) == ["ok", "refused"]
        await assert_released(served)


async def test_clients_that_leave_give_back_their_place_and_their_slot(
    serve: Any, slow_ollama: Any, cloud: Any, sqlite_url: str, store: str | None
) -> None:
    slow_ollama.settings.latency = 0.6
    watch = Recorder()
    async with serve(config_for(slow_ollama, cloud, sqlite_url, store), plugins=[TokenAuth(), watch]) as served:
        holder = asyncio.ensure_future(chat(served, "basic", "holder"))
        await asyncio.sleep(0.1)
        waiter = asyncio.ensure_future(chat(served, "basic", "waiter"))
        await asyncio.sleep(0.1)
        waiter.cancel()
        holder.cancel()
        await asyncio.gather(holder, waiter, return_exceptions=True)
        assert [c.outcome for c in await watch.wait_settled(2)] == ["client_gone", "client_gone"]
        await assert_released(served)

        # The freed slot serves the next caller at once, not after a lease runs out.
        nxt = await chat(served, "basic", "next")
        assert nxt.status == 200 and nxt.elapsed < 1.0
        assert "waiter" not in served_texts(slow_ollama)
        await assert_released(served)


async def test_cloud_models_requested_directly_go_to_cloud_and_count_against_the_cap(
    serve: Any, ollama: Any, cloud: Any, sqlite_url: str, store: str | None
) -> None:
    watch = Recorder()
    async with serve(config_for(ollama, cloud, sqlite_url, store), plugins=[TokenAuth(), watch]) as served:
        reply = await chat(served, "enterprise", model=CLOUD_MODEL)
        assert (reply.status, reply.route, reply.fingerprint) == (200, "cloud", "fp_cloud")
        (ctx,) = await watch.wait_settled(1)
        assert (ctx.route, ctx.multiplier) == ("cloud", 2)
        assert (await served.gateway.plugin("failover").budget.status())["used"] == 1
        assert ollama.served == []
        await assert_released(served)


async def test_without_a_cloud_key_pro_waits_locally_instead_of_spilling(
    serve: Any, slow_ollama: Any, cloud: Any, sqlite_url: str, store: str | None
) -> None:
    slow_ollama.settings.latency = 0.1
    config = config_for(slow_ollama, cloud, sqlite_url, store)
    config["upstreams"]["cloud"]["api_key"] = None  # the example config's default: cloud not set up
    async with serve(config, plugins=[TokenAuth()]) as served:
        replies = await asyncio.gather(*(chat(served, "pro", f"n={i}") for i in range(8)))
        assert [(r.status, r.route) for r in replies] == [(200, "local")] * 8
        assert cloud.served == [] and len(slow_ollama.served) == 8
        assert (await served.gateway.plugin("failover").budget_status())["used"] == 0
        await assert_released(served)
