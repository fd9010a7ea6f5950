"""The upstream gets exactly what the gateway checked and billed (issue 15, findings 1 and 2).

The fake Ollama decodes bodies as Ollama's Go server does (tests/fakes/godecode.py): keys matched with Go's
case folding, the last one wins, and only `max_tokens` caps generation. Before the fix, a body could name
one model or budget to the gateway and another to the upstream, and `max_completion_tokens` alone left the
upstream uncapped while the hold paid for 64 tokens.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.support.auth import TokenAuth, bearer
from tests.support.bodies import chat_body
from tests.support.credits import credits_config, table_rows, until_settled
from tests.test_credits_concurrency import gateway_processes, reconcile, setup

JSON = {"content-type": "application/json"}
MESSAGES = '[{"role":"user","content":"hello"}]'
CHAT = "chat/completions"


def post(served: Any, body: bytes, account: int, tier: str = "basic", path: str = "/v1/chat/completions") -> Any:
    return served.request("POST", path, data=body, headers={**JSON, **bearer(account, tier, locale="en")})


async def test_max_completion_tokens_alone_caps_what_the_upstream_generates(
    db_url: str, ollama: Any, serve: Any
) -> None:
    ollama.settings.chunks = 1500  # the upstream would generate 1,500 tokens if nothing capped it
    body = chat_body("qwen2.5-coder:14b", max_completion_tokens=64)
    hold = len(body) + 64
    async with serve(credits_config(ollama_url=ollama.url, database_url=db_url), plugins=[TokenAuth()]) as served:
        credits = served.gateway.plugin("credits")
        await credits.grant(account_id=5, amount_milli=hold * 8, kind="grant", reference="seed-5")

        async def one() -> tuple[int, Any]:
            async with post(served, body, 5) as r:
                return r.status, await r.json()

        results = await asyncio.gather(*(one() for _ in range(8)))
        await until_settled(served.gateway, 5)
        state = await credits.balance(5)
        usage = await table_rows(served.gateway, "usage", account_id=5)
        ledger = await table_rows(served.gateway, "ledger", account_id=5)
    assert [status for status, _ in results] == [200] * 8
    for _, data in results:
        assert data["usage"]["completion_tokens"] == 64
        assert data["choices"][0]["finish_reason"] == "length"
    assert {s["decoded"]["max_tokens"] for s in ollama.served} == {64}
    assert {s["body"]["max_completion_tokens"] for s in ollama.served} == {64}
    assert all(u["completion_tokens"] == 64 and u["cost_milli"] <= hold for u in usage)
    assert state["balance_milli"] == hold * 8 - sum(u["cost_milli"] for u in usage) >= 0
    assert state["balance_milli"] == sum(r["amount_milli"] for r in ledger)


AMBIGUOUS = [
    # (endpoint, body, the offending key)
    (CHAT, f'{{"model":"llama3.2:3b","Model":"glm-4.7-flash","max_tokens":10,"messages":{MESSAGES}}}', "Model"),
    (CHAT, f'{{"model":"llama3.2:3b","messages":{MESSAGES},"max_tokens":10,"MAX_TOKENS":3000}}', "MAX_TOKENS"),
    (CHAT, f'{{"model":"llama3.2:3b","messages":{MESSAGES},"max_to\u212aens":3000}}', "max_to\u212aens"),
    (CHAT, f'{{"model":"llama3.2:3b","messages":{MESSAGES},"\u017ftream":true}}', "\u017ftream"),
    (CHAT, f'{{"MODEL":"qwen3:30b","model":"llama3.2:3b","messages":{MESSAGES}}}', "MODEL"),
    (CHAT, f'{{"model":"llama3.2:3b","messages":{MESSAGES},"Messages":[]}}', "Messages"),
    (
        CHAT,
        '{"model":"llama3.2:3b","messages":[{"role":"user","content":"hi","Content":"a much longer prompt"}]}',
        "messages[0].Content",
    ),
    (
        CHAT,
        f'{{"model":"llama3.2:3b","messages":{MESSAGES},"stream":true,"stream_options":{{"Include_Usage":true}}}}',
        "stream_options.Include_Usage",
    ),
    ("embeddings", '{"model":"qwen3-embedding:0.6b","Model":"bge-m3","input":"hello"}', "Model"),
]


@pytest.mark.parametrize(("endpoint", "raw", "key"), AMBIGUOUS, ids=[a[2] for a in AMBIGUOUS])
async def test_another_spelling_of_a_field_the_upstream_reads_is_refused(
    db_url: str, ollama: Any, serve: Any, endpoint: str, raw: str, key: str
) -> None:
    async with serve(credits_config(ollama_url=ollama.url, database_url=db_url), plugins=[TokenAuth()]) as served:
        credits = served.gateway.plugin("credits")
        await credits.grant(account_id=6, amount_milli=1_000_000, kind="grant", reference="seed-6")
        async with post(served, raw.encode(), 6, path=f"/v1/{endpoint}") as r:
            assert r.status == 400
            error = (await r.json())["error"]
        state = await credits.balance(6)
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "ambiguous_parameter"
    assert error["param"] == key
    assert ollama.arrivals == 0
    assert state["balance_milli"] == 1_000_000 and state["reserved_milli"] == 0


async def test_duplicate_keys_reach_the_upstream_once_as_checked_held_and_logged(
    db_url: str, ollama: Any, serve: Any
) -> None:
    ollama.settings.chunks = 500
    # orjson keeps the last of duplicate keys; the gateway checks and forwards that one only.
    raw = (
        f'{{"model":"qwen3:30b","messages":{MESSAGES},"max_tokens":3000,'
        f'"model":"llama3.2:3b","max_tokens":10,"stream":true,"stream":false}}'
    ).encode()
    async with serve(credits_config(ollama_url=ollama.url, database_url=db_url), plugins=[TokenAuth()]) as served:
        await served.gateway.plugin("credits").grant(account_id=7, amount_milli=100_000, kind="grant", reference="s")
        async with post(served, raw, 7) as r:
            assert r.status == 200
            data = await r.json()
        await until_settled(served.gateway, 7)
        usage = await table_rows(served.gateway, "usage", account_id=7)
    decoded = ollama.served[-1]["decoded"]
    assert (decoded["model"], decoded["max_tokens"], decoded["stream"]) == ("llama3.2:3b", 10, False)
    assert data["usage"]["completion_tokens"] == 10
    assert [(u["model"], u["completion_tokens"], u["stream"]) for u in usage] == [("llama3.2:3b", 10, False)]


async def test_a_basic_user_cannot_reach_a_larger_model_by_spelling(db_url: str, ollama: Any, serve: Any) -> None:
    raw = f'{{"model":"llama3.2:3b","messages":{MESSAGES},"mOdel":"qwen3:30b"}}'.encode()
    async with serve(credits_config(ollama_url=ollama.url, database_url=db_url), plugins=[TokenAuth()]) as served:
        await served.gateway.plugin("credits").grant(account_id=8, amount_milli=100_000, kind="grant", reference="s")
        async with post(served, raw, 8) as r:
            assert r.status == 400
    assert ollama.arrivals == 0


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"stream": True, "stream_options": {"include_usage": "no"}}, "stream_options.include_usage"),
        ({"stream": True, "stream_options": {"include_usage": 1}}, "stream_options.include_usage"),
        ({"stream": "true"}, "stream"),
        ({"stream": 0}, "stream"),
        ({"n": 3}, "n"),
        ({"max_tokens": 10.0}, "max_tokens"),
        ({"max_completion_tokens": -1}, "max_completion_tokens"),
    ],
)
async def test_booleans_and_numbers_are_strict(
    sqlite_url: str, ollama: Any, serve: Any, extra: dict[str, Any], param: str
) -> None:
    body = chat_body(**extra)
    async with serve(credits_config(ollama_url=ollama.url, database_url=sqlite_url), plugins=[TokenAuth()]) as served:
        await served.gateway.plugin("credits").grant(account_id=9, amount_milli=100_000, kind="grant", reference="s")
        async with post(served, body, 9) as r:
            assert r.status == 400
            error = (await r.json())["error"]
    assert error["param"] == param
    assert ollama.arrivals == 0


async def test_a_stream_without_include_usage_gets_no_usage_chunk_and_is_billed(
    sqlite_url: str, ollama: Any, serve: Any
) -> None:
    body = chat_body(stream=True, stream_options={"include_usage": False})
    async with serve(credits_config(ollama_url=ollama.url, database_url=sqlite_url), plugins=[TokenAuth()]) as served:
        await served.gateway.plugin("credits").grant(account_id=4, amount_milli=100_000, kind="grant", reference="s")
        async with post(served, body, 4) as r:
            text = await r.text()
        await until_settled(served.gateway, 4)
        usage = await table_rows(served.gateway, "usage", account_id=4)
    assert '"usage":{' not in text and text.endswith("data: [DONE]\n\n")
    assert ollama.served[-1]["decoded"]["stream_options"] == {"include_usage": True}
    assert usage[0]["usage_source"] == "upstream" and usage[0]["completion_tokens"] == 5


@pytest.mark.slow
async def test_two_workers_on_mariadb_and_redis_never_generate_beyond_the_hold(
    tmp_path: Path, mariadb_database: str, redis_url: str
) -> None:
    """Finding 1 as it was found: 8 concurrent requests with only `max_completion_tokens` on a small
    balance, served by two workers sharing MariaDB and Redis."""
    from edge import config as config_module
    from edge.gateway import Gateway

    body = chat_body("qwen2.5-coder:14b", max_completion_tokens=64)
    hold = len(body) + 64
    with (
        setup(tmp_path, mariadb_database, redis_url, "--chunks", "1500", gated=False) as (path, config, _),
        gateway_processes(path, tmp_path, count=1) as ports,
    ):
        gateway = Gateway(config_module.parse(config, env={}))
        await gateway.start()
        try:
            await gateway.plugin("credits").grant(account_id=42, amount_milli=hold * 6, kind="grant", reference="s")
            url = f"http://127.0.0.1:{ports[0]}/v1/chat/completions"
            async with aiohttp.ClientSession() as http:

                async def one() -> tuple[int, Any]:
                    async with http.post(url, data=body, headers={**JSON, **bearer(42, "basic", locale="en")}) as r:
                        return r.status, orjson.loads(await r.read())

                results = await asyncio.gather(*(one() for _ in range(8)))
            await until_settled(gateway, 42, within=20)
            state = await gateway.plugin("credits").balance(42)
            usage = await table_rows(gateway, "usage", account_id=42)
        finally:
            await gateway.stop()
        code, out = await reconcile(path)
    served = [data for status, data in results if status == 200]
    assert {status for status, _ in results} <= {200, 402} and served
    assert all(data["usage"]["completion_tokens"] == 64 for data in served)
    assert sum(u["completion_tokens"] for u in usage) == 64 * len(served)
    assert state["balance_milli"] == hold * 6 - sum(u["cost_milli"] for u in usage) >= 0
    assert code == 0 and "0 difference(s)" in out, out
