"""Settle: the hold becomes the real charge, once, with one usage row, however the request ended."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest

from edge.context import RequestContext
from edge.hookspecs import hookimpl
from plugins.credits.rows import utcnow
from tests.support.auth import TokenAuth, bearer
from tests.support.bodies import chat_body, estimated_prompt
from tests.support.credits import credits_config, table_rows, until_settled
from tests.support.recorder import Recorder

TEXT = "مرحبا، hello"
# Cases that run both with a transaction per hold and settlement, and with leases (given back after 50 ms).
LEASES = pytest.mark.parametrize("leases", [{}, {"lease_requests": 32, "lease_idle_ms": 50}], ids=["holds", "leases"])
START = 1_000_000


@asynccontextmanager
async def funded(
    serve: Any, db_url: str, ollama: Any, *extra: object, account: int = 1, **settings: Any
) -> AsyncIterator[Any]:
    """A served gateway with the credits plugin and START milli-credits granted to `account`."""
    config = credits_config(ollama_url=ollama.url, database_url=db_url, **settings)
    async with serve(config, plugins=[TokenAuth(), *extra]) as served:
        await served.gateway.plugin("credits").grant(
            account_id=account, amount_milli=START, kind="grant", reference=f"seed-{account}"
        )
        yield served


def post(served: Any, body: bytes, account: int = 1, headers: dict[str, str] | None = None) -> Any:
    return served.request(
        "POST",
        "/v1/chat/completions",
        data=body,
        headers={"content-type": "application/json", **bearer(account), **(headers or {})},
    )


async def read_events(resp: Any, content_events: int) -> int:
    """Read SSE events until `content_events` carried content; returns how many did."""
    seen = 0
    while seen < content_events:
        raw = await resp.content.readuntil(b"\n\n")
        if raw.startswith(b"data: {") and b'"content":"tok' in raw:
            seen += 1
    return seen


async def check_books(served: Any, account: int = 1) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The one usage row; the balance equals the seed minus the ledger's usage rows; nothing is held."""
    await until_settled(served.gateway, account)
    usage = await table_rows(served.gateway, "usage", account_id=account)
    ledger = await table_rows(served.gateway, "ledger", account_id=account)
    balance = await served.gateway.plugin("credits").balance(account)
    assert len(usage) == 1
    assert balance["reserved_milli"] == 0
    assert balance["balance_milli"] == START - usage[0]["cost_milli"] == sum(r["amount_milli"] for r in ledger)
    return usage[0], ledger


async def test_a_whole_answer_is_charged_from_upstream_usage_with_a_complete_usage_row(
    db_url: str, ollama: Any, serve: Any
) -> None:
    async with funded(serve, db_url, ollama) as served:
        async with post(served, chat_body(), headers={"x-request-id": "req-settle-1"}) as r:
            assert r.status == 200
            answer = await r.json()
        usage, ledger = await check_books(served)
    total = answer["usage"]["total_tokens"]
    assert answer["usage"]["prompt_tokens"] == estimated_prompt(TEXT)  # the fake counts like the rule
    assert {
        k: usage[k]
        for k in (
            "request_id",
            "account_id",
            "user_id",
            "key_id",
            "model",
            "endpoint",
            "route",
            "upstream",
            "stream",
            "prompt_tokens",
            "completion_tokens",
            "usage_source",
            "multiplier",
            "cost_milli",
            "status",
            "outcome",
        )
    } == {
        "request_id": "req-settle-1",
        "account_id": 1,
        "user_id": 10,
        "key_id": 100,
        "model": "llama3.2:3b",
        "endpoint": "chat",
        "route": "local",
        "upstream": "ollama",
        "stream": False,
        "prompt_tokens": answer["usage"]["prompt_tokens"],
        "completion_tokens": 5,
        "usage_source": "upstream",
        "multiplier": 1,
        "cost_milli": total,
        "status": 200,
        "outcome": "ok",
    }
    assert usage["latency_ms"] >= 0 and usage["ttft_ms"] is not None
    assert usage["day"] == datetime.now(ZoneInfo("Asia/Kuwait")).date()
    charge = ledger[-1]
    assert (charge["kind"], charge["amount_milli"], charge["balance_after_milli"], charge["reference"]) == (
        "usage",
        -total,
        START - total,
        usage["charge_id"],
    )


async def test_a_client_that_disconnects_mid_stream_pays_for_what_was_delivered(
    db_url: str, ollama: Any, serve: Any
) -> None:
    ollama.settings.chunks, ollama.settings.chunk_interval = 40, 0.05
    async with funded(serve, db_url, ollama) as served:
        r = await post(served, chat_body(stream=True))
        assert r.status == 200
        assert await read_events(r, 3) == 3
        r.close()
        usage, _ = await check_books(served)
    assert usage["outcome"] == "client_gone" and usage["usage_source"] == "estimated"
    assert usage["prompt_tokens"] == estimated_prompt(TEXT)
    # What the gateway relayed before it saw the client go: the 3 read, maybe one or two in flight; never 40.
    assert 3 <= usage["completion_tokens"] <= 6
    assert usage["cost_milli"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert ollama.in_flight == 0


async def test_an_upstream_that_drops_the_connection_mid_stream_is_billed_for_the_chunks_relayed(
    db_url: str, ollama: Any, serve: Any
) -> None:
    ollama.settings.chunks, ollama.settings.abort_after = 10, 3
    async with funded(serve, db_url, ollama) as served:
        async with post(served, chat_body(stream=True)) as r:
            raw = await r.read()
        usage, _ = await check_books(served)
    assert raw.count(b'"content":"tok') == 3 and b'"code":"upstream_error"' in raw
    assert (usage["outcome"], usage["usage_source"], usage["completion_tokens"]) == ("upstream_error", "estimated", 3)
    assert usage["cost_milli"] == estimated_prompt(TEXT) + 3


async def test_an_upstream_error_event_mid_stream_is_billed_for_the_chunks_relayed(
    db_url: str, ollama: Any, serve: Any
) -> None:
    ollama.settings.chunks, ollama.settings.error_after = 10, 4
    async with funded(serve, db_url, ollama) as served:
        async with post(served, chat_body(stream=True, stream_options={"include_usage": True})) as r:
            raw = await r.read()
        usage, _ = await check_books(served)
    assert raw.count(b'"content":"tok') == 4
    assert (usage["outcome"], usage["usage_source"], usage["completion_tokens"]) == ("upstream_error", "estimated", 4)
    assert usage["cost_milli"] == estimated_prompt(TEXT) + 4


async def test_a_stream_without_a_usage_chunk_is_billed_by_the_estimate_rule(
    db_url: str, ollama: Any, serve: Any
) -> None:
    ollama.settings.chunks, ollama.settings.missing_usage = 7, True
    async with funded(serve, db_url, ollama) as served:
        async with post(served, chat_body(stream=True)) as r:
            raw = await r.read()
        usage, _ = await check_books(served)
    assert raw.endswith(b"data: [DONE]\n\n")
    assert (usage["outcome"], usage["usage_source"], usage["completion_tokens"]) == ("ok", "estimated", 7)
    assert (usage["prompt_tokens"], usage["cost_milli"]) == (estimated_prompt(TEXT), estimated_prompt(TEXT) + 7)


async def test_a_request_that_failed_before_any_output_is_charged_nothing(db_url: str, ollama: Any, serve: Any) -> None:
    ollama.settings.fail_status = 500
    async with funded(serve, db_url, ollama) as served:
        async with post(served, chat_body(stream=True)) as r:
            assert r.status == 502
        usage, ledger = await check_books(served)
    assert (usage["cost_milli"], usage["usage_source"], usage["outcome"]) == (0, "none", "upstream_error")
    assert [row["kind"] for row in ledger] == ["grant"]


async def test_embeddings_are_charged_for_their_input_tokens(db_url: str, ollama: Any, serve: Any) -> None:
    async with funded(serve, db_url, ollama) as served:
        body = orjson.dumps({"model": "qwen3-embedding:0.6b", "input": ["one two three", "four"]})
        async with served.request(
            "POST", "/v1/embeddings", data=body, headers={"content-type": "application/json", **bearer(1)}
        ) as r:
            assert r.status == 200
            tokens = (await r.json())["usage"]["prompt_tokens"]
        usage, _ = await check_books(served)
    assert (usage["endpoint"], usage["prompt_tokens"], usage["completion_tokens"]) == ("embeddings", tokens, 0)
    assert usage["cost_milli"] == tokens


@LEASES
async def test_settle_is_idempotent_however_often_and_concurrently_it_runs(
    db_url: str, ollama: Any, serve: Any, leases: dict[str, int]
) -> None:
    settled = Recorder()
    async with funded(serve, db_url, ollama, settled, **leases) as served:
        plugin = served.gateway.plugin("credits")
        async with post(served, chat_body()) as r:
            assert r.status == 200
        first, _ = await check_books(served)
        done = settled.settled[0]
        await asyncio.gather(*(plugin.resayil_settle(ctx=done) for _ in range(5)))
        assert await table_rows(served.gateway, "usage") == [first]
        # A fresh hold settled five times at once: charged once, one usage row.
        fresh = dataclasses.replace(done, request_id="req-again", extras={})
        await plugin.resayil_reserve(ctx=fresh)
        assert (await plugin.balance(1))["reserved_milli"] > 0
        await asyncio.gather(*(plugin.resayil_settle(ctx=fresh) for _ in range(5)))
        await until_settled(served.gateway, 1)  # with leases: until the idle lease gave its room back
        usage = await table_rows(served.gateway, "usage", request_id="req-again")
        ledger = await table_rows(served.gateway, "ledger", kind="usage")
        balance = await plugin.balance(1)
    assert len(usage) == 1 and len(ledger) == 2
    assert balance["reserved_milli"] == 0
    assert balance["balance_milli"] == START - first["cost_milli"] - usage[0]["cost_milli"]
    assert usage[0]["cost_milli"] == first["cost_milli"]


class CostlyRoute:
    """Routes at 100x, more than any hold assumed: a misconfigured route must still not overspend."""

    name = "costly_route"

    @hookimpl(tryfirst=True)
    async def resayil_route(self, ctx: RequestContext) -> None:
        assert ctx.model is not None
        ctx.upstream, ctx.upstream_model, ctx.route, ctx.multiplier = ctx.model.upstream, ctx.model.name, "local", 100


@LEASES
async def test_a_charge_beyond_the_hold_takes_only_what_is_free_and_never_goes_below_zero(
    db_url: str, ollama: Any, serve: Any, leases: dict[str, int]
) -> None:
    body = chat_body()
    config = credits_config(ollama_url=ollama.url, database_url=db_url, **leases)
    async with serve(config, plugins=[TokenAuth(), CostlyRoute()]) as served:
        plugin = served.gateway.plugin("credits")
        await plugin.grant(account_id=2, amount_milli=len(body) + 64 + 5, kind="grant", reference="seed")
        async with post(served, body, 2) as r:
            assert r.status == 200
        await until_settled(served.gateway, 2)
        usage = (await table_rows(served.gateway, "usage", account_id=2))[0]
        balance = await plugin.balance(2)
    assert usage["multiplier"] == 100 and usage["cost_milli"] == len(body) + 64 + 5
    assert balance == {"account_id": 2, "balance_milli": 0, "reserved_milli": 0, "available_milli": 0}


async def test_a_hold_that_commits_after_its_request_was_cancelled_is_given_straight_back(
    db_url: str, ollama: Any, serve: Any, monkeypatch: Any
) -> None:
    """A client that disconnects while its hold is being taken: the transaction commits all the same (on
    MariaDB the CALL is already in the server), and the hold must not stay reserved until it expires."""
    async with funded(serve, db_url, ollama) as served:
        ledger = served.gateway.plugin("credits").ledger
        real_hold = ledger._hold
        started, taken = asyncio.Event(), []

        async def slow_hold(**kwargs: Any) -> str | None:
            started.set()
            await asyncio.sleep(0.2)  # the request is cancelled meanwhile
            hold_id = await real_hold(**kwargs)
            taken.append(hold_id)
            return hold_id

        monkeypatch.setattr(ledger, "_hold", slow_hold)
        request = asyncio.ensure_future(
            ledger.hold(
                account_id=1,
                amount_milli=50_000,
                request_id="req_cancelled",
                tier="basic",
                expires_at=utcnow() + timedelta(minutes=10),
            )
        )
        await started.wait()
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
        for _ in range(100):
            if taken and not ledger._cleanups:
                break
            await asyncio.sleep(0.05)
        assert taken and taken[0] is not None, "the hold should have been taken after the cancellation"
        assert await table_rows(served.gateway, "holds") == []
        assert await ledger.state(1) == {
            "account_id": 1,
            "balance_milli": START,
            "reserved_milli": 0,
            "available_milli": START,
        }
