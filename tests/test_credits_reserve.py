"""Reserve: the worst case is held before a request goes upstream; 402 when the balance cannot pay a
useful minimum, a lowered completion budget when it pays less than asked."""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest

from tests.support.auth import TokenAuth, bearer, token
from tests.support.bodies import chat_body
from tests.support.credits import credits_config, table_rows, until_settled
from tests.support.recorder import Recorder

TOP_UP = "https://portal.example.test/#/billing"
JSON = {"content-type": "application/json"}


def post(served: Any, body: bytes, account: int, tier: str = "basic", locale: str = "ar") -> Any:
    return served.request(
        "POST", "/v1/chat/completions", data=body, headers={**JSON, **bearer(account, tier, locale=locale)}
    )


async def test_402_is_openai_shaped_in_arabic_with_top_up_link_and_the_openai_client_does_not_retry(
    db_url: str, ollama: Any, serve: Any
) -> None:
    counter = Recorder()
    config = credits_config(ollama_url=ollama.url, database_url=db_url)
    async with serve(config, plugins=[TokenAuth(), counter]) as served:
        client = openai.AsyncOpenAI(base_url=served.url + "/v1", api_key=token(7, "basic", locale="ar"), max_retries=3)
        with pytest.raises(openai.APIStatusError) as caught:
            await client.chat.completions.create(model="llama3.2:3b", messages=[{"role": "user", "content": "hello"}])
        await client.close()
    exc = caught.value
    assert exc.status_code == 402
    assert exc.response.headers["x-should-retry"] == "false"
    error = exc.response.json()["error"]
    assert error["type"] == "insufficient_quota" and error["code"] == "insufficient_quota"
    assert error["param"] is None
    assert error["top_up_url"] == TOP_UP
    assert "رصيدك غير كافٍ" in error["message"] and TOP_UP in error["message"]
    # One request reached the gateway and none the upstream: the client did not retry the 402.
    assert len(counter.authorized) == 1
    assert ollama.arrivals == 0


async def test_402_message_is_english_for_an_english_user_and_names_what_is_needed(
    db_url: str, ollama: Any, serve: Any
) -> None:
    body = chat_body()
    async with serve(credits_config(ollama_url=ollama.url, database_url=db_url), plugins=[TokenAuth()]) as served:
        plugin = served.gateway.plugin("credits")
        # Pays the prompt's bound and 63 completion tokens: one short of the useful minimum (64).
        await plugin.grant(account_id=8, amount_milli=len(body) + 63, kind="grant", reference="seed-8")
        async with post(served, body, 8, locale="en") as r:
            assert r.status == 402
            assert r.headers["x-should-retry"] == "false"
            error = (await r.json())["error"]
        assert (await plugin.balance(8))["reserved_milli"] == 0
    assert error["message"].startswith("You do not have enough credits for this request")
    needed = len(body) + 64
    assert f"needs at least {needed // 1000}.{needed % 1000:03d} credits" in error["message"]
    assert f"{(len(body) + 63) // 1000}.{(len(body) + 63) % 1000:03d} are available" in error["message"]
    assert error["top_up_url"] == TOP_UP and ollama.arrivals == 0


@pytest.mark.parametrize("key", [None, "max_tokens", "max_completion_tokens"])
async def test_a_short_balance_lowers_the_completion_budget_sent_upstream(
    db_url: str, ollama: Any, serve: Any, key: str | None
) -> None:
    # qwen2.5-coder:14b has the default cap of 2048 completion tokens; the balance pays for 100.
    asked: dict[str, Any] = {key: 1000} if key else {}
    body = chat_body("qwen2.5-coder:14b", **asked)
    async with serve(credits_config(ollama_url=ollama.url, database_url=db_url), plugins=[TokenAuth()]) as served:
        plugin = served.gateway.plugin("credits")
        await plugin.grant(account_id=3, amount_milli=len(body) + 100, kind="grant", reference="seed-3")
        async with post(served, body, 3) as r:
            assert r.status == 200
            assert r.headers["x-resayil-completion-budget"] == "100"
            answer = await r.json()
        sent = ollama.served[-1]["body"]
        # `max_tokens` is the cap Ollama obeys, so it always travels; `max_completion_tokens` only when used.
        assert sent["max_tokens"] == 100 and ollama.served[-1]["decoded"]["max_tokens"] == 100
        assert sent.get("max_completion_tokens") == (100 if key == "max_completion_tokens" else None)
        assert answer["usage"]["completion_tokens"] == 5
        await until_settled(served.gateway, 3)
        usage = (await table_rows(served.gateway, "usage", account_id=3))[0]
        assert usage["cost_milli"] == answer["usage"]["prompt_tokens"] + 5
        assert (await plugin.balance(3))["balance_milli"] == len(body) + 100 - usage["cost_milli"]


async def test_enough_balance_sends_the_clients_cap_or_the_models_default_cap(
    db_url: str, ollama: Any, serve: Any
) -> None:
    capped = chat_body("qwen2.5-coder:14b", max_tokens=300)
    uncapped = chat_body("qwen2.5-coder:14b")
    async with serve(credits_config(ollama_url=ollama.url, database_url=db_url), plugins=[TokenAuth()]) as served:
        await served.gateway.plugin("credits").grant(
            account_id=3, amount_milli=len(uncapped) + 2048, kind="grant", reference="seed-3"
        )
        async with post(served, capped, 3) as r:
            assert r.status == 200 and "x-resayil-completion-budget" not in r.headers
        assert ollama.served[-1]["body"]["max_tokens"] == 300
        await until_settled(served.gateway, 3)
        await served.gateway.plugin("credits").grant(account_id=3, amount_milli=1000, kind="grant", reference="more")
        async with post(served, uncapped, 3) as r:
            assert r.status == 200 and "x-resayil-completion-budget" not in r.headers
    # Ollama would otherwise generate until the context is full: the hold's bound must travel upstream.
    assert ollama.served[-1]["body"]["max_tokens"] == 2048
    assert "max_completion_tokens" not in ollama.served[-1]["body"]


@pytest.mark.parametrize(("tier", "multiplier"), [("basic", 1), ("pro", 2)])
async def test_the_hold_is_at_the_highest_multiplier_the_request_could_be_routed_to(
    db_url: str, ollama: Any, serve: Any, tier: str, multiplier: int
) -> None:
    """llama3.2:3b runs locally (1x) but falls back to a cloud model (2x), which a pro plan may use."""
    body = chat_body()
    worst = (len(body) + 64) * multiplier
    ollama.settings.latency = 0.5
    async with serve(credits_config(ollama_url=ollama.url, database_url=db_url), plugins=[TokenAuth()]) as served:
        plugin = served.gateway.plugin("credits")
        await plugin.grant(account_id=4, amount_milli=worst - 1, kind="grant", reference="short")
        async with post(served, body, 4, tier) as r:
            assert r.status == 402
        await plugin.grant(account_id=4, amount_milli=1, kind="grant", reference="exact")
        request = asyncio.ensure_future(post(served, body, 4, tier))
        for _ in range(200):
            if ollama.in_flight:
                break
            await asyncio.sleep(0.01)
        state = await plugin.balance(4)
        holds = await table_rows(served.gateway, "holds", account_id=4)
        async with await request as r:  # the response of the request sent above
            assert r.status == 200
            answer = await r.json()
        await until_settled(served.gateway, 4)
        # Served locally: charged at 1x whatever the hold assumed.
        assert (await plugin.balance(4)) == {
            "account_id": 4,
            "balance_milli": worst - answer["usage"]["total_tokens"],
            "reserved_milli": 0,
            "available_milli": worst - answer["usage"]["total_tokens"],
        }
    assert state["reserved_milli"] == worst and state["available_milli"] == 0
    assert [h["amount_milli"] for h in holds] == [worst]


async def test_a_cloud_model_is_held_and_charged_at_2x(db_url: str, ollama: Any, cloud: Any, serve: Any) -> None:
    from tests.conftest import base_config

    body = chat_body("deepseek-v3.1:671b-cloud", max_tokens=10)
    config = base_config(ollama_url=ollama.url, cloud_url=cloud.url, database_url=db_url, plugins=[{"name": "credits"}])
    async with serve(config, plugins=[TokenAuth()]) as served:
        plugin = served.gateway.plugin("credits")
        await plugin.grant(account_id=5, amount_milli=(len(body) + 10) * 2, kind="grant", reference="seed")
        async with post(served, body, 5, "pro") as r:
            assert r.status == 200
            total = (await r.json())["usage"]["total_tokens"]
        await until_settled(served.gateway, 5)
        usage = (await table_rows(served.gateway, "usage", account_id=5))[0]
    assert usage["route"] == "cloud" and usage["multiplier"] == 2 and usage["upstream"] == "cloud"
    assert usage["cost_milli"] == total * 2


async def test_open_access_callers_are_not_billed(db_url: str, ollama: Any, serve: Any) -> None:
    async with serve(credits_config(ollama_url=ollama.url, database_url=db_url), plugins=[TokenAuth()]) as served:
        async with served.request(
            "POST", "/v1/chat/completions", data=chat_body(), headers={**JSON, **bearer(None)}
        ) as r:
            assert r.status == 200
        assert await table_rows(served.gateway, "usage") == []
        assert await table_rows(served.gateway, "balances") == []


async def test_a_database_that_fails_while_holding_answers_503_and_nothing_runs_unpaid(
    db_url: str, ollama: Any, serve: Any, monkeypatch: Any
) -> None:
    """The database cannot be stopped in a test, so its failure is injected where the hold is taken:
    the error each driver raises when the server goes away."""
    import pymysql
    import sqlalchemy as sa

    async with serve(credits_config(ollama_url=ollama.url, database_url=db_url), plugins=[TokenAuth()]) as served:
        plugin = served.gateway.plugin("credits")
        await plugin.grant(account_id=3, amount_milli=1_000_000, kind="grant", reference="seed-3")

        async def lost(**_: Any) -> str | None:
            if served.gateway.database.is_sqlite:
                raise sa.exc.OperationalError("INSERT", {}, Exception("disk I/O error"))
            raise pymysql.err.OperationalError(2013, "Lost connection to MySQL server during query")

        monkeypatch.setattr(plugin.ledger, "_hold", lost)
        async with post(served, chat_body(), 3) as resp:
            status, headers, data = resp.status, resp.headers, await resp.json()
        monkeypatch.undo()
        state = await plugin.ledger.state(3)
    assert status == 503
    assert headers["retry-after"] == "5"
    assert data["error"]["code"] == "billing_unavailable"
    assert "MySQL" not in data["error"]["message"] and "disk" not in data["error"]["message"]
    assert ollama.arrivals == 0
    assert state["balance_milli"] == 1_000_000 and state["reserved_milli"] == 0
