"""Failover with the credits ledger: spilled requests are billed 2x with `route: cloud`, and every hold and
slot is given back however a request ends. On SQLite and MariaDB, with the queue in Redis."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.support.auth import TokenAuth
from tests.support.credits import table_rows, until_settled
from tests.support.failover import ACCOUNTS, CLOUD_MODEL, assert_released, chat, failover_config

START = 1_000_000


def billed_config(ollama: Any, cloud: Any, db_url: str, redis_url: str, **settings: Any) -> dict[str, Any]:
    config = failover_config(
        ollama_url=ollama.url, cloud_url=cloud.url, database_url=db_url, redis_url=redis_url, **settings
    )
    config["plugins"].insert(0, {"name": "credits", "settings": {}})
    return config


async def seed(served: Any, *tiers: str) -> None:
    for tier in tiers:
        await served.gateway.plugin("credits").grant(
            account_id=ACCOUNTS[tier], amount_milli=START, kind="grant", reference=f"seed-{tier}"
        )


async def test_spilled_requests_are_billed_at_the_cloud_multiplier_and_recorded_as_cloud(
    serve: Any, ollama: Any, cloud: Any, db_url: str, redis_url: str
) -> None:
    ollama.settings.parallel = 1
    ollama.settings.latency = 0.3
    async with serve(billed_config(ollama, cloud, db_url, redis_url), plugins=[TokenAuth()]) as served:
        await seed(served, "pro")
        replies = await asyncio.gather(*(chat(served, "pro", f"n={i}") for i in range(8)))
        assert [r.status for r in replies] == [200] * 8
        await until_settled(served.gateway, ACCOUNTS["pro"])

        rows = await table_rows(served.gateway, "usage", account_id=ACCOUNTS["pro"])
        assert sorted((r["route"], r["upstream"], r["multiplier"]) for r in rows) == sorted(
            [("cloud", "cloud", 2)] * 3 + [("local", "ollama", 1)] * 5
        )
        for row in rows:
            tokens = row["prompt_tokens"] + row["completion_tokens"]
            assert tokens > 0 and row["cost_milli"] == tokens * row["multiplier"]
            assert row["model"] == "llama3.2:3b"  # what the customer asked for, whichever route served it
        # Each reply's own usage, at the multiplier its route header names.
        by_route = {"local": 1, "cloud": 2}
        assert sum(r["cost_milli"] for r in rows) == sum(
            r.body["usage"]["total_tokens"] * by_route[str(r.route)] for r in replies
        )
        balance = await served.gateway.plugin("credits").balance(ACCOUNTS["pro"])
        assert balance["reserved_milli"] == 0
        assert balance["balance_milli"] == START - sum(r["cost_milli"] for r in rows)
        assert await table_rows(served.gateway, "holds") == []
        await assert_released(served)


async def test_refused_and_failed_requests_give_back_their_hold_and_their_slot(
    serve: Any, ollama: Any, cloud: Any, db_url: str, redis_url: str
) -> None:
    ollama.settings.parallel = 1
    ollama.settings.latency = 1.0
    config = billed_config(
        ollama, cloud, db_url, redis_url, queue_max_wait_seconds=0.3, cloud_daily_cap=0, down_after_failures=100
    )
    async with serve(config, plugins=[TokenAuth()]) as served:
        await seed(served, "basic", "pro")
        holder = asyncio.ensure_future(chat(served, "basic", "holder"))
        await asyncio.sleep(0.1)
        timed_out = await chat(served, "basic", "late")
        capped = await chat(served, "pro", model=CLOUD_MODEL)
        assert (timed_out.status, timed_out.code) == (503, "queue_timeout")
        assert (capped.status, capped.code) == (503, "cloud_budget_exhausted")
        assert (await holder).status == 200

        ollama.settings.latency = 0
        ollama.settings.fail_status = 500
        failed = await chat(served, "pro", "failing")  # retried once, cannot spill (cap 0): its error
        assert (failed.status, failed.code) == (502, "upstream_error")

        await until_settled(served.gateway)
        assert await table_rows(served.gateway, "holds") == []
        pro = await served.gateway.plugin("credits").balance(ACCOUNTS["pro"])
        assert (pro["balance_milli"], pro["reserved_milli"]) == (START, 0)
        basic_rows = await table_rows(served.gateway, "usage", account_id=ACCOUNTS["basic"])
        charged = sum(r["cost_milli"] for r in basic_rows)
        assert charged > 0 and [r["outcome"] for r in basic_rows if r["cost_milli"]] == ["ok"]
        basic = await served.gateway.plugin("credits").balance(ACCOUNTS["basic"])
        assert (basic["balance_milli"], basic["reserved_milli"]) == (START - charged, 0)
        await assert_released(served)


async def test_the_slot_is_free_for_the_next_request_before_the_charge_is_written(
    serve: Any, ollama: Any, cloud: Any, db_url: str, redis_url: str
) -> None:
    # One local slot, and leases that write charges only a second after they are settled.
    ollama.settings.parallel = 1
    config = billed_config(ollama, cloud, db_url, redis_url)
    config["plugins"][0]["settings"] = {"lease_requests": 8, "settle_batch_ms": 1000}
    async with serve(config, plugins=[TokenAuth()]) as served:
        await seed(served, "basic")
        first = await chat(served, "basic", "first")
        second = await chat(served, "basic", "second")
        assert (first.status, second.status) == (200, 200)
        # The second request got the slot at once, not after the first one's charge was written.
        assert second.elapsed < 0.5, second.elapsed
        assert await table_rows(served.gateway, "usage", account_id=ACCOUNTS["basic"]) == []
        await until_settled(served.gateway, ACCOUNTS["basic"], within=10)
        rows = await table_rows(served.gateway, "usage", account_id=ACCOUNTS["basic"])
        assert len(rows) == 2 and all(r["cost_milli"] > 0 for r in rows)
        await assert_released(served)
