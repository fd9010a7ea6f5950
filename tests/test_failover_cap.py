"""The daily cloud cap: counted before a request goes out, never exceeded, alerts once, Kuwait's day."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from plugins.failover.budget import CloudBudget, MemoryCounts
from tests.support.auth import TokenAuth
from tests.support.failover import CLOUD_MODEL, assert_released, chat, failover_config
from tests.support.recorder import Recorder


@pytest.fixture(params=["redis", "memory"])
def store(request: pytest.FixtureRequest) -> str | None:
    return request.getfixturevalue("redis_url") if request.param == "redis" else None


def kuwait_today() -> str:
    return datetime.now(ZoneInfo("Asia/Kuwait")).date().isoformat()


async def test_a_cap_of_5_under_50_concurrent_spill_overs_sends_exactly_5_to_cloud(
    serve: Any, ollama: Any, cloud: Any, sqlite_url: str, store: str | None
) -> None:
    ollama.settings.parallel = 1
    ollama.settings.latency = 0.04
    config = failover_config(
        ollama_url=ollama.url, cloud_url=cloud.url, database_url=sqlite_url, redis_url=store, cloud_daily_cap=5
    )
    watch = Recorder()
    async with serve(config, plugins=[TokenAuth(), watch]) as served:
        replies = await asyncio.gather(*(chat(served, "pro", f"n={i}") for i in range(50)))

        assert [r.status for r in replies] == [200] * 50
        routes = [r.route for r in replies]
        assert routes.count("cloud") == 5 and len(cloud.served) == 5
        # After the cap, traffic stays local: the other 45 waited for the one local slot.
        assert routes.count("local") == 45 and len(ollama.served) == 45
        await served.gateway.drain()
        budget_events = [(name, p["used"], p["cap"]) for name, p in watch.events if name.startswith("cloud.")]
        # Each once, from the count that crossed it (a burst may publish the two in either order).
        assert sorted(budget_events) == [("cloud.budget_100", 5, 5), ("cloud.budget_80", 4, 5)]
        assert await served.gateway.plugin("failover").budget_status() == {
            "day": kuwait_today(),
            "used": 5,
            "cap": 5,
            "percent": 100,
        }
        if store is not None:
            assert await served.gateway.redis.get(f"resayil:failover:cloud:{kuwait_today()}:used") == b"5"

        # Past the cap a cloud model asked for by name is refused with a clear reason; nothing is sent.
        refused = await chat(served, "enterprise", model=CLOUD_MODEL)
        assert refused.status == 503 and refused.code == "cloud_budget_exhausted"
        assert "cloud" in refused.body["error"]["message"] and "midnight" in refused.body["error"]["message"]
        assert refused.headers["x-should-retry"] == "false"
        assert 0 < int(refused.headers["retry-after"]) <= 24 * 3600
        assert len(cloud.served) == 5
        await served.gateway.drain()
        assert sorted(n for n, _ in watch.events if n.startswith("cloud.")) == ["cloud.budget_100", "cloud.budget_80"]
        settled = await watch.wait_settled(51)
        assert settled[-1].outcome == "refused" and settled[-1].error_code == "cloud_budget_exhausted"
        await assert_released(served)


async def test_a_cloud_request_that_fails_before_any_output_gives_its_count_back(
    serve: Any, ollama: Any, cloud: Any, sqlite_url: str, store: str | None
) -> None:
    cloud.settings.fail_status = 500
    config = failover_config(
        ollama_url=ollama.url, cloud_url=cloud.url, database_url=sqlite_url, redis_url=store, cloud_daily_cap=1
    )
    watch = Recorder()
    async with serve(config, plugins=[TokenAuth(), watch]) as served:
        plugin = served.gateway.plugin("failover")
        failed = await chat(served, "pro", model=CLOUD_MODEL)
        assert failed.status == 502 and failed.code == "upstream_error"
        assert cloud.failures == 2  # a 500 may be the request's own doing: one retry
        (ctx,) = await watch.wait_settled(1)
        assert ctx.extras["failover"].tried == ["cloud"] * 2
        assert (await plugin.budget_status())["used"] == 0

        cloud.settings.fail_status = None
        ok = await chat(served, "pro", model=CLOUD_MODEL)
        assert (ok.status, ok.route) == (200, "cloud")
        assert (await plugin.budget_status())["used"] == 1
        await assert_released(served)


async def test_the_budget_day_is_kuwaits_calendar_day() -> None:
    now = [datetime(2025, 1, 1, 20, 59, tzinfo=UTC)]
    budget = CloudBudget(
        store=MemoryCounts(), cap=2, timezone="Asia/Kuwait", publish=lambda event: None, clock=lambda: now[0]
    )
    assert budget.today() == "2025-01-01"  # 23:59 in Kuwait
    assert budget.seconds_to_midnight() == 61
    assert await budget.take() == "2025-01-01"
    assert await budget.take() == "2025-01-01"
    assert await budget.take() is None

    now[0] = datetime(2025, 1, 1, 21, 0, tzinfo=UTC)  # midnight in Kuwait, still 1 January in UTC
    assert budget.today() == "2025-01-02"
    assert await budget.take() == "2025-01-02"
    assert await budget.status() == {"day": "2025-01-02", "used": 1, "cap": 2, "percent": 50}


async def test_budget_alerts_fire_once_a_day_even_when_counts_are_given_back() -> None:
    published: list[tuple[str, int]] = []
    now = [datetime(2025, 3, 1, 9, 0, tzinfo=UTC)]
    budget = CloudBudget(
        store=MemoryCounts(),
        cap=5,
        timezone="Asia/Kuwait",
        publish=lambda event: published.append((event.event_name, event.used)),
        clock=lambda: now[0],
    )
    for _ in range(4):
        await budget.take()
    await budget.give_back("2025-03-01")
    await budget.take()
    await budget.take()
    assert await budget.take() is None
    assert published == [("cloud.budget_80", 4), ("cloud.budget_100", 5)]

    now[0] = datetime(2025, 3, 2, 9, 0, tzinfo=UTC)
    for _ in range(5):
        await budget.take()
    assert published[2:] == [("cloud.budget_80", 4), ("cloud.budget_100", 5)]
