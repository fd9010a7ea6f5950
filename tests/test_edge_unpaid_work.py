"""Ways to make the upstream work without paying, found by the adversarial pass after issue 15's fixes.

A whole answer is generated before its first byte, so a client that leaves before it (or an answer that
outlasts the time limit) was relayed nothing: it is charged its bound, not zero. A cut stream's estimated
prompt counts every text the upstream read (tool definitions too). Bodies nested deeper than the gateway can
write again, and budgets no model has, are refused before anything is held.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest

from tests.conftest import base_config
from tests.support.auth import TokenAuth, bearer
from tests.support.bodies import chat_body
from tests.support.credits import credits_config, table_rows, until_settled

JSON = {"content-type": "application/json"}


async def funded(served: Any, account: int, milli: int = 1_000_000) -> Any:
    credits = served.gateway.plugin("credits")
    await credits.grant(account_id=account, amount_milli=milli, kind="grant", reference=f"seed-{account}")
    return credits


async def test_a_client_that_leaves_before_its_whole_answer_is_charged_its_bound(
    db_url: str, ollama: Any, serve: Any
) -> None:
    ollama.settings.latency = 1.5  # the model works on it for 1.5 s before the whole answer exists
    body = chat_body("qwen2.5-coder:14b", max_tokens=200)
    async with serve(credits_config(ollama_url=ollama.url, database_url=db_url), plugins=[TokenAuth()]) as served:
        credits = await funded(served, 21)
        with pytest.raises(asyncio.TimeoutError):
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.5)) as http:
                url = served.url + "/v1/chat/completions"
                async with http.post(url, data=body, headers={**JSON, **bearer(21)}) as r:
                    await r.read()
        await until_settled(served.gateway, 21)
        rows = await table_rows(served.gateway, "usage", account_id=21)
        state = await credits.balance(21)
    assert ollama.arrivals == 1
    [row] = rows
    assert (row["status"], row["outcome"], row["usage_source"]) == (499, "client_gone", "bounded")
    assert row["cost_milli"] == len(body) + 200
    assert state["balance_milli"] == 1_000_000 - (len(body) + 200)


async def test_a_client_that_leaves_while_queued_pays_nothing(sqlite_url: str, ollama: Any, serve: Any) -> None:
    """Nothing reached the upstream, so nothing is charged."""
    ollama.settings.latency = 1.5
    config = credits_config(ollama_url=ollama.url, database_url=sqlite_url)
    config["upstreams"]["ollama"]["parallel"] = 1
    config["plugins"].append({"name": "failover", "settings": {}})
    async with serve(config, plugins=[TokenAuth()]) as served:
        credits = await funded(served, 22)
        url = served.url + "/v1/chat/completions"
        async with aiohttp.ClientSession() as first:
            holder = asyncio.ensure_future(first.post(url, data=chat_body(), headers={**JSON, **bearer(22)}))
            await asyncio.sleep(0.3)
            with pytest.raises(asyncio.TimeoutError):
                async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.4)) as http:
                    async with http.post(url, data=chat_body(text="queued"), headers={**JSON, **bearer(22)}) as r:
                        await r.read()
            (await holder).release()
        await until_settled(served.gateway, 22)
        rows = await table_rows(served.gateway, "usage", account_id=22)
        state = await credits.balance(22)
    assert ollama.arrivals == 1
    assert sorted((u["status"], u["usage_source"], u["cost_milli"] > 0) for u in rows) == [
        (200, "upstream", True),
        (499, "none", False),
    ]
    assert state["reserved_milli"] == 0


async def test_a_whole_answer_past_the_time_limit_is_a_504_charged_its_bound(
    db_url: str, ollama: Any, serve: Any
) -> None:
    ollama.settings.latency = 1.5
    config = credits_config(ollama_url=ollama.url, database_url=db_url)
    config["timeouts"].update(first_byte_seconds=0.2, total_seconds=0.6)
    body = chat_body(max_tokens=30)
    async with serve(config, plugins=[TokenAuth()]) as served:
        credits = await funded(served, 23)
        async with served.request("POST", "/v1/chat/completions", data=body, headers={**JSON, **bearer(23)}) as r:
            assert r.status == 504
            assert (await r.json())["error"]["code"] == "upstream_timeout"
        await until_settled(served.gateway, 23)
        rows = await table_rows(served.gateway, "usage", account_id=23)
        state = await credits.balance(23)
    assert [(u["status"], u["cost_milli"]) for u in rows] == [(504, len(body) + 30)]
    assert state["balance_milli"] == 1_000_000 - len(body) - 30


async def test_a_whole_answer_may_take_longer_than_a_streams_first_byte(
    sqlite_url: str, ollama: Any, serve: Any
) -> None:
    ollama.settings.latency = 0.5
    config = credits_config(ollama_url=ollama.url, database_url=sqlite_url)
    config["timeouts"].update(first_byte_seconds=0.2, total_seconds=5)
    async with serve(config, plugins=[TokenAuth()]) as served:
        await funded(served, 24)
        async with served.request(
            "POST", "/v1/chat/completions", data=chat_body(), headers={**JSON, **bearer(24)}
        ) as r:
            assert r.status == 200


async def test_a_cut_streams_prompt_counts_the_tools_it_sent(sqlite_url: str, ollama: Any, serve: Any) -> None:
    ollama.settings.chunks, ollama.settings.chunk_interval = 60, 0.01
    document = "نص طويل " * 2000  # 30,000 bytes of tool description the upstream reads as prompt
    tools = [{"type": "function", "function": {"name": "doc", "description": document, "parameters": {}}}]
    body = chat_body(stream=True, max_tokens=60, tools=tools)
    async with serve(credits_config(ollama_url=ollama.url, database_url=sqlite_url), plugins=[TokenAuth()]) as served:
        await funded(served, 25)
        async with aiohttp.ClientSession() as http:
            r = await http.post(served.url + "/v1/chat/completions", data=body, headers={**JSON, **bearer(25)})
            for _ in range(10):
                await r.content.readuntil(b"\n\n")
            r.close()
        await until_settled(served.gateway, 25)
        [row] = await table_rows(served.gateway, "usage", account_id=25)
    assert row["usage_source"] == "estimated"
    assert row["prompt_tokens"] >= len(document.encode()) // 4


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


HI = '"messages":[{"role":"user","content":"hi"}]'
UNCARRIABLE = [
    (f'{{"model":"llama3.2:3b",{HI},"stop":{nested(300)}}}', None, "invalid_json"),
    ('{"model":"qwen3-embedding:0.6b","input":' + nested(260) + "}", None, "invalid_json"),
    (f'{{"model":"llama3.2:3b",{HI},"max_tokens":18446744073709551615}}', "max_tokens", "invalid_value"),
    (f'{{"model":"llama3.2:3b",{HI},"max_completion_tokens":1000001}}', "max_completion_tokens", "invalid_value"),
]


@pytest.mark.parametrize(("raw", "param", "code"), UNCARRIABLE)
async def test_bodies_the_gateway_cannot_carry_are_refused_before_any_hold(
    db_url: str, ollama: Any, serve: Any, raw: str, param: str | None, code: str
) -> None:
    path = "/v1/embeddings" if "embedding" in raw else "/v1/chat/completions"
    async with serve(credits_config(ollama_url=ollama.url, database_url=db_url), plugins=[TokenAuth()]) as served:
        credits = await funded(served, 26)
        async with served.request("POST", path, data=raw.encode(), headers={**JSON, **bearer(26)}) as r:
            assert r.status == 400
            error = (await r.json())["error"]
        state = await credits.balance(26)
    assert (error["code"], error["param"]) == (code, param)
    assert state["reserved_milli"] == 0 and ollama.arrivals == 0


async def test_the_debug_template_switch_never_reaches_the_upstream(ollama: Any, sqlite_url: str, serve: Any) -> None:
    body = {"model": "llama3.2:3b", "messages": [{"role": "user", "content": "hi"}], "_debug_render_only": True}
    async with serve(base_config(ollama_url=ollama.url, database_url=sqlite_url), plugins=[TokenAuth()]) as gw:
        async with gw.request("POST", "/v1/chat/completions", data=orjson.dumps(body), headers=bearer(1, "pro")) as r:
            assert r.status == 200
    assert "_debug_render_only" not in ollama.served[-1]["body"]


@pytest.mark.parametrize("path", ["/v1x", "/v1.html", "/v1beta/models"])
async def test_paths_that_only_start_like_v1_get_the_portals_headers(
    ollama: Any, sqlite_url: str, serve: Any, path: str
) -> None:
    async with serve(base_config(ollama_url=ollama.url, database_url=sqlite_url)) as gw:
        async with gw.request("GET", path) as r:
            assert r.status == 404
            assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
            assert r.headers["x-frame-options"] == "DENY"


async def test_leaving_a_cloud_answer_early_keeps_its_place_in_the_daily_cap(
    serve: Any, ollama: Any, cloud: Any, sqlite_url: str
) -> None:
    """The review's attack: six cloud requests, each abandoned after a moment, against a cap of 2."""
    from tests.support.failover import CLOUD_MODEL, as_tier, failover_config

    cloud.settings.latency = 1.0
    config = failover_config(
        ollama_url=ollama.url, cloud_url=cloud.url, database_url=sqlite_url, redis_url=None, cloud_daily_cap=2
    )
    body = orjson.dumps({"model": CLOUD_MODEL, "messages": [{"role": "user", "content": "a long essay"}]})
    async with serve(config, plugins=[TokenAuth()]) as served:
        for _ in range(6):
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.3)) as http:
                url = served.url + "/v1/chat/completions"
                try:
                    async with http.post(url, data=body, headers={**JSON, **as_tier("pro")}) as r:
                        if r.status != 200:
                            assert (await r.json())["error"]["code"] == "cloud_budget_exhausted"
                except TimeoutError:
                    pass
        await served.gateway.drain()
        status = await served.gateway.plugin("failover").budget_status()
    assert status["used"] == 2
    assert cloud.arrivals == 2
