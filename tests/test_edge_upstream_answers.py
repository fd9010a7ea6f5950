"""What an upstream answers is checked before a client sees it (issue 15, findings 6, 8 and 10).

A client never gets a success that was not one, a stream always ends with `[DONE]` or an error event, an
upstream's usage counts are bounded by what the request could use, the upstream's own words stay in the
log, and the usage row records the status the client got.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest

from tests.support.auth import TokenAuth, bearer
from tests.support.bodies import chat_body
from tests.support.credits import credits_config, table_rows, until_settled

JSON = {"content-type": "application/json"}
INTERNAL = "llama runner process has terminated: error loading model /usr/share/ollama/.ollama/models/blobs/sha256-9f"


def post(served: Any, body: bytes, account: int) -> Any:
    return served.request(
        "POST", "/v1/chat/completions", data=body, headers={**JSON, **bearer(account, "basic", locale="en")}
    )


async def funded(served: Any, account: int, milli: int = 1_000_000) -> Any:
    credits = served.gateway.plugin("credits")
    await credits.grant(account_id=account, amount_milli=milli, kind="grant", reference=f"seed-{account}")
    return credits


GARBAGE = [
    (b"<html><body>502 Bad Gateway</body></html>", "text/html"),
    (b"\x00\x01\xffnot json", "application/octet-stream"),
    (b'{"error":"oops"}', "application/json"),
    (b'{"choices":"x","usage":{"prompt_tokens":1}}', "application/json"),
    (b"[1,2,3]", "application/json"),
]


@pytest.mark.parametrize(("answer", "content_type"), GARBAGE)
@pytest.mark.parametrize("stream", [False, True])
async def test_an_upstream_200_that_is_not_an_answer_is_a_502_and_costs_nothing(
    db_url: str, ollama: Any, serve: Any, answer: bytes, content_type: str, stream: bool
) -> None:
    ollama.settings.answer_body, ollama.settings.answer_type = answer, content_type
    async with serve(credits_config(ollama_url=ollama.url, database_url=db_url), plugins=[TokenAuth()]) as served:
        credits = await funded(served, 11)
        async with post(served, chat_body(stream=stream), 11) as r:
            assert r.status == 502
            assert r.content_type == "application/json"
            error = (await r.json())["error"]
        await until_settled(served.gateway, 11)
        rows = await table_rows(served.gateway, "usage", account_id=11)
        state = await credits.balance(11)
    assert (error["type"], error["code"]) == ("server_error", "upstream_error")
    assert "html" not in error["message"].lower() and "oops" not in error["message"]
    assert state["balance_milli"] == 1_000_000 and state["reserved_milli"] == 0
    assert [(u["status"], u["cost_milli"]) for u in rows] == [(502, 0)]


async def test_a_stream_that_turns_malformed_ends_with_an_error_event(sqlite_url: str, ollama: Any, serve: Any) -> None:
    first = b'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
    ollama.settings.answer_type = "text/event-stream"
    for tail in (b"data: {not json\n\n", b'data: {"choices":"x"}\n\n', b"data: 5\n\n", b""):
        ollama.settings.answer_body = first + tail
        async with serve(credits_config(ollama_url=ollama.url, database_url=sqlite_url), plugins=[TokenAuth()]) as s:
            await funded(s, 12)
            async with post(s, chat_body(stream=True), 12) as r:
                assert r.status == 200
                text = await r.text()
        events = [e for e in text.split("\n\n") if e]
        assert events[0] == first.decode().strip()
        last = orjson.loads(events[-1].removeprefix("data: "))
        assert last["error"]["code"] == "upstream_error", tail
        assert "[DONE]" not in text


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": 1e30, "completion_tokens": 1e30, "total_tokens": 2e30},
        {"prompt_tokens": 5, "completion_tokens": 2_000_000_000, "total_tokens": 2_000_000_005},
        {"prompt_tokens": -500, "completion_tokens": -3, "total_tokens": -503},
        {"prompt_tokens": "abc", "completion_tokens": None},
        "nonsense",
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_upstream_usage_is_bounded_by_what_the_request_could_use(
    db_url: str, ollama: Any, serve: Any, usage: Any, stream: bool, caplog: pytest.LogCaptureFixture
) -> None:
    ollama.settings.usage = usage
    body = chat_body("qwen2.5-coder:14b", max_tokens=20, stream=stream, stream_options={"include_usage": True})
    bound = len(body) + 20
    async with serve(credits_config(ollama_url=ollama.url, database_url=db_url), plugins=[TokenAuth()]) as served:
        credits = await funded(served, 13, 700_000)
        with caplog.at_level(logging.WARNING, logger="resayil.usage"):
            async with post(served, body, 13) as r:
                assert r.status == 200
                text = await r.text()
            await until_settled(served.gateway, 13)
        rows = await table_rows(served.gateway, "usage", account_id=13)
        ledger = await table_rows(served.gateway, "ledger", account_id=13)
        state = await credits.balance(13)
    assert not stream or text.endswith("data: [DONE]\n\n")
    [row] = rows
    assert row["status"] == 200 and row["usage_source"] == "bounded"
    assert 0 <= row["prompt_tokens"] <= len(body) and 0 <= row["completion_tokens"] <= 20
    assert row["cost_milli"] == row["prompt_tokens"] + row["completion_tokens"] <= bound
    assert state["balance_milli"] == 700_000 - row["cost_milli"] == sum(e["amount_milli"] for e in ledger)
    assert "upstream usage out of bounds" in caplog.text


async def test_another_accounts_bad_usage_does_not_touch_a_good_request(db_url: str, ollama: Any, serve: Any) -> None:
    async with serve(credits_config(ollama_url=ollama.url, database_url=db_url), plugins=[TokenAuth()]) as served:
        credits = await funded(served, 14)
        await funded(served, 15)
        ollama.settings.usage = {"prompt_tokens": 1e30, "completion_tokens": 1e30}
        async with post(served, chat_body(), 14) as r:
            assert r.status == 200
        ollama.settings.usage = None
        async with post(served, chat_body(), 15) as r:
            answer = await r.json()
        await until_settled(served.gateway)
        good = await table_rows(served.gateway, "usage", account_id=15)
        state = await credits.balance(15)
    assert good[0]["cost_milli"] == answer["usage"]["total_tokens"]
    assert state["balance_milli"] == 1_000_000 - answer["usage"]["total_tokens"]


@pytest.mark.parametrize(
    ("status", "expected", "code"),
    [(500, 502, "upstream_error"), (400, 400, "upstream_rejected"), (404, 404, "model_not_found")],
)
async def test_upstream_internals_stay_in_the_log_and_the_row_keeps_the_status(
    db_url: str, ollama: Any, serve: Any, status: int, expected: int, code: str, caplog: pytest.LogCaptureFixture
) -> None:
    ollama.settings.fail_status, ollama.settings.fail_body = status, INTERNAL
    async with serve(credits_config(ollama_url=ollama.url, database_url=db_url), plugins=[TokenAuth()]) as served:
        await funded(served, 16)
        with caplog.at_level(logging.WARNING, logger="resayil.upstream"):
            async with post(served, chat_body(), 16) as r:
                assert r.status == expected
                raw = await r.text()
        await until_settled(served.gateway, 16)
        rows = await table_rows(served.gateway, "usage", account_id=16)
    error = orjson.loads(raw)["error"]
    assert error["code"] == code
    for leak in ("llama runner", "/usr/share", "sha256", "ollama", "127.0.0.1", ollama.url):
        assert leak not in raw
    # The operator still sees what the upstream said, in the log line's fields.
    assert any(INTERNAL in str(getattr(record, "fields", "")) for record in caplog.records)
    assert {u["status"] for u in rows} == {expected}


async def test_an_in_stream_upstream_error_is_told_without_its_text(sqlite_url: str, ollama: Any, serve: Any) -> None:
    ollama.settings.error_after = 2
    async with serve(credits_config(ollama_url=ollama.url, database_url=sqlite_url), plugins=[TokenAuth()]) as served:
        await funded(served, 17)
        async with post(served, chat_body(stream=True), 17) as r:
            text = await r.text()
    last = orjson.loads(text.strip().split("\n\n")[-1].removeprefix("data: "))
    assert last["error"]["code"] == "upstream_error"
    assert "fake in-stream error" not in text
