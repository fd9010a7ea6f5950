"""The /v1 relay: bodies forwarded as checked, streams chunk by chunk, usage handling, upstream failures."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest

from tests.conftest import base_config
from tests.support.auth import TokenAuth, bearer
from tests.support.bodies import CHAT
from tests.support.recorder import Recorder


@pytest.fixture
def cfg(ollama: Any, sqlite_url: str) -> dict[str, Any]:
    return base_config(ollama_url=ollama.url, database_url=sqlite_url)


def sse_events(text: str) -> list[Any]:
    out = []
    for block in text.split("\n\n"):
        if block.startswith("data: "):
            data = block[6:]
            out.append(data if data == "[DONE]" else orjson.loads(data))
    return out


async def test_chat_is_relayed_with_every_field_kept(serve: Any, cfg: dict[str, Any], ollama: Any) -> None:
    body = {**CHAT, "temperature": 0.2, "max_tokens": 3, "seed": 7, "user": "u-1"}
    raw = orjson.dumps(body)
    async with serve(cfg, plugins=[TokenAuth()]) as gw:
        async with gw.request(
            "POST",
            "/v1/chat/completions",
            data=raw,
            headers={**bearer(1, "pro"), **{"Content-Type": "application/json"}},
        ) as r:
            assert r.status == 200
            data = await r.json()
    assert data["object"] == "chat.completion"
    assert data["choices"][0]["message"]["content"] == "tok0 tok1 tok2 "
    assert data["choices"][0]["finish_reason"] == "length"
    assert data["usage"]["completion_tokens"] == 3
    # Every field reaches the upstream as sent; only `stream` is spelled out.
    assert ollama.served[-1]["body"] == {**body, "stream": False}
    assert "authorization" not in ollama.served[-1]["headers"]


async def test_stream_strips_the_usage_chunk_the_client_did_not_ask_for(
    serve: Any, cfg: dict[str, Any], ollama: Any
) -> None:
    recorder = Recorder()
    async with serve(cfg, plugins=[TokenAuth(), recorder]) as gw:
        async with gw.request(
            "POST", "/v1/chat/completions", json={**CHAT, "stream": True}, headers=bearer(1, "pro")
        ) as r:
            assert r.status == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            events = sse_events(await r.text())
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert len(chunks) == 5 and all(c["choices"] for c in chunks)
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks) == "tok0 tok1 tok2 tok3 tok4 "
    # The gateway asked upstream for usage anyway, and billed from it.
    assert ollama.served[-1]["body"]["stream_options"] == {"include_usage": True}
    usage = recorder.settled[0].usage
    assert (usage.completion_tokens, usage.source) == (5, "upstream")
    assert usage.prompt_tokens > 0


async def test_streams_and_answers_one_after_another_reuse_one_upstream_connection(
    serve: Any, cfg: dict[str, Any], ollama: Any
) -> None:
    """After `[DONE]` the end of the upstream's chunked body is read, so its kept-alive connection goes back
    to the pool instead of being closed: every stream would otherwise open a new connection to Ollama."""
    ollama.settings.end_delay = 0.02  # the body's end arrives after `[DONE]`, as from Ollama's Go server
    async with serve(cfg, plugins=[TokenAuth()]) as gw:
        for stream in (True, True, False, True):
            async with gw.request(
                "POST", "/v1/chat/completions", json={**CHAT, "stream": stream}, headers=bearer(1, "pro")
            ) as r:
                assert r.status == 200
                await r.read()
            await asyncio.sleep(0.05)  # the relay finishes reading the upstream after the client's last byte
    peers = [served["peer"] for served in ollama.served]
    assert len(peers) == 4 and peers[0]
    assert len(set(peers)) == 1, peers


async def test_stream_keeps_the_usage_chunk_when_asked(serve: Any, cfg: dict[str, Any]) -> None:
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    async with serve(cfg, plugins=[TokenAuth()]) as gw:
        async with gw.request("POST", "/v1/chat/completions", json=body, headers=bearer(1, "pro")) as r:
            events = sse_events(await r.text())
    usage_chunk = events[-2]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] == 5


async def test_stream_is_relayed_as_it_arrives_not_buffered(serve: Any, cfg: dict[str, Any], ollama: Any) -> None:
    ollama.settings.chunks = 4
    ollama.settings.chunk_interval = 0.25
    async with serve(cfg, plugins=[TokenAuth()]) as gw:
        started = time.perf_counter()
        async with gw.request(
            "POST", "/v1/chat/completions", json={**CHAT, "stream": True}, headers=bearer(1, "pro")
        ) as r:
            first = await r.content.readuntil(b"\n\n")
            first_at = time.perf_counter() - started
            rest = await r.read()
            total = time.perf_counter() - started
    assert b"tok0" in first
    assert first_at < 0.2 and total > 0.7
    assert b"[DONE]" in rest


async def test_embeddings_are_relayed(serve: Any, cfg: dict[str, Any]) -> None:
    recorder = Recorder()
    async with serve(cfg, plugins=[TokenAuth(), recorder]) as gw:
        async with gw.request(
            "POST",
            "/v1/embeddings",
            json={"model": "qwen3-embedding:0.6b", "input": ["a", "بيت"]},
            headers=bearer(1, "pro"),
        ) as r:
            assert r.status == 200
            data = await r.json()
    assert [d["index"] for d in data["data"]] == [0, 1]
    assert recorder.settled[0].usage.prompt_tokens == data["usage"]["prompt_tokens"]


async def test_a_chat_model_is_not_an_embedding_model(serve: Any, cfg: dict[str, Any]) -> None:
    async with serve(cfg, plugins=[TokenAuth()]) as gw:
        async with gw.request(
            "POST", "/v1/embeddings", json={"model": "llama3.2:3b", "input": "x"}, headers=bearer(1, "pro")
        ) as r:
            assert r.status == 404
            assert (await r.json())["error"]["code"] == "model_not_found"


async def test_models_lists_the_catalogue_without_hidden_models(serve: Any, cfg: dict[str, Any]) -> None:
    cfg["models"].append({"name": "bge-m3", "upstream": "ollama", "class": "embedding"})
    async with serve(cfg, plugins=[TokenAuth()]) as gw:
        async with gw.request("GET", "/v1/models", headers=bearer(1, "pro")) as r:
            assert r.status == 200
            data = await r.json()
        async with gw.request(
            "POST", "/v1/embeddings", json={"model": "bge-m3", "input": "x"}, headers=bearer(1, "pro")
        ) as r:
            hidden = await r.json()
            assert r.status == 404
        async with gw.request(
            "POST", "/v1/embeddings", json={"model": "no-such", "input": "x"}, headers=bearer(1, "pro")
        ) as r:
            unknown = await r.json()
    ids = [m["id"] for m in data["data"]]
    assert data["object"] == "list" and "llama3.2:3b" in ids
    assert not {"bge-m3", "glm-4.7-flash", "nomic-embed-text"} & set(ids)
    assert hidden["error"]["code"] == unknown["error"]["code"] == "model_not_found"
    assert hidden["error"]["message"].replace("bge-m3", "X") == unknown["error"]["message"].replace("no-such", "X")


@pytest.mark.parametrize(
    ("status", "body", "want_status", "want_code", "want_type"),
    [
        (400, {"error": "invalid options"}, 400, "upstream_rejected", "invalid_request_error"),
        (
            404,
            {"error": 'model "llama3.2:3b" not found, try pulling it first'},
            404,
            "model_not_found",
            "invalid_request_error",
        ),
        (500, {"error": "llama runner process has terminated"}, 502, "upstream_error", "server_error"),
        (
            503,
            {"error": "server busy, please try again.  maximum pending requests exceeded"},
            503,
            "upstream_busy",
            "server_error",
        ),
    ],
)
async def test_upstream_errors_are_retyped_by_status(
    serve: Any,
    cfg: dict[str, Any],
    ollama: Any,
    status: int,
    body: dict[str, str],
    want_status: int,
    want_code: str,
    want_type: str,
) -> None:
    ollama.settings.fail_status = status
    ollama.settings.fail_body = body
    recorder = Recorder()
    async with serve(cfg, plugins=[TokenAuth(), recorder]) as gw:
        async with gw.request("POST", "/v1/chat/completions", json=CHAT, headers=bearer(1, "pro")) as r:
            assert r.status == want_status
            assert r.headers["content-type"] == "application/json"
            error = (await r.json())["error"]
            retry_after = r.headers.get("retry-after")
    assert (error["code"], error["type"]) == (want_code, want_type)
    assert set(error) >= {"message", "type", "param", "code"}
    if status == 503:
        assert retry_after == "1"
    assert len(recorder.settled) == 1 and recorder.settled[0].usage.source == "none"


async def test_unreachable_upstream_is_502(serve: Any, sqlite_url: str) -> None:
    cfg = base_config(ollama_url="http://127.0.0.1:9", database_url=sqlite_url)
    async with serve(cfg, plugins=[TokenAuth()]) as gw:
        async with gw.request("POST", "/v1/chat/completions", json=CHAT, headers=bearer(1, "pro")) as r:
            assert r.status == 502
            assert (await r.json())["error"]["code"] == "upstream_unreachable"


async def test_first_byte_timeout_is_504(serve: Any, cfg: dict[str, Any], ollama: Any) -> None:
    cfg["timeouts"]["first_byte_seconds"] = 0.3
    ollama.settings.latency = 2
    stream = {**CHAT, "stream": True}
    async with serve(cfg, plugins=[TokenAuth()]) as gw:
        started = time.perf_counter()
        async with gw.request("POST", "/v1/chat/completions", json=stream, headers=bearer(1, "pro")) as r:
            assert r.status == 504
            assert (await r.json())["error"]["code"] == "upstream_timeout"
            # The wait shows where it was: in the upstream's phase of `server-timing`, cut at the limit.
            last = r.headers["server-timing"].split(", ")[-1]
            assert last.startswith("upstream;dur=") and 300 <= float(last.split("=")[1]) < 1000
        assert time.perf_counter() - started < 1.5


async def test_idle_timeout_mid_stream_ends_with_an_error_event(serve: Any, cfg: dict[str, Any], ollama: Any) -> None:
    cfg["timeouts"]["idle_seconds"] = 0.3
    ollama.settings.chunks = 3
    ollama.settings.chunk_interval = 1.0
    recorder = Recorder()
    async with serve(cfg, plugins=[TokenAuth(), recorder]) as gw:
        async with gw.request(
            "POST", "/v1/chat/completions", json={**CHAT, "stream": True}, headers=bearer(1, "pro")
        ) as r:
            assert r.status == 200
            events = sse_events(await r.text())
    assert events[0]["choices"][0]["delta"]["content"] == "tok0 "
    assert events[-1]["error"]["code"] == "upstream_timeout"
    assert "[DONE]" not in events
    assert recorder.settled[0].outcome == "upstream_timeout"


async def test_upstream_cut_mid_stream_ends_with_an_error_event_and_settles_once(
    serve: Any, cfg: dict[str, Any], ollama: Any
) -> None:
    ollama.settings.chunks = 6
    ollama.settings.abort_after = 2
    recorder = Recorder()
    async with serve(cfg, plugins=[TokenAuth(), recorder]) as gw:
        async with gw.request(
            "POST", "/v1/chat/completions", json={**CHAT, "stream": True}, headers=bearer(1, "pro")
        ) as r:
            assert r.status == 200
            events = sse_events(await r.text())
    assert [e["choices"][0]["delta"]["content"] for e in events[:-1]] == ["tok0 ", "tok1 "]
    assert events[-1]["error"]["code"] == "upstream_error"
    [ctx] = recorder.settled
    assert ctx.outcome == "upstream_error"
    assert (ctx.usage.completion_tokens, ctx.usage.source) == (2, "estimated")
    assert ctx.usage.prompt_tokens > 0


async def test_upstream_error_event_mid_stream_is_retyped(serve: Any, cfg: dict[str, Any], ollama: Any) -> None:
    ollama.settings.error_after = 1
    async with serve(cfg, plugins=[TokenAuth()]) as gw:
        async with gw.request(
            "POST", "/v1/chat/completions", json={**CHAT, "stream": True}, headers=bearer(1, "pro")
        ) as r:
            events = sse_events(await r.text())
    assert events[0]["choices"][0]["delta"]["content"] == "tok0 "
    assert events[-1]["error"]["type"] == "server_error"
    assert events[-1]["error"]["code"] == "upstream_error"


async def test_client_disconnect_mid_stream_settles_once_with_what_was_delivered(
    serve: Any, cfg: dict[str, Any], ollama: Any
) -> None:
    ollama.settings.chunks = 50
    ollama.settings.chunk_interval = 0.05
    recorder = Recorder()
    async with serve(cfg, plugins=[TokenAuth(), recorder]) as gw:
        r = await gw.http.post(gw.url + "/v1/chat/completions", json={**CHAT, "stream": True}, headers=bearer(1, "pro"))
        got = b""
        while got.count(b"\n\n") < 3:
            got += await r.content.readany()
        r.close()  # the client goes away mid-stream
        for _ in range(100):
            if recorder.settled:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)
        assert ollama.in_flight == 0  # the gateway let go of the upstream too
    [ctx] = recorder.settled
    assert ctx.outcome == "client_gone"
    assert ctx.usage.source == "estimated"
    assert 3 <= ctx.usage.completion_tokens < 50


async def test_stream_without_usage_is_counted_from_what_was_relayed(
    serve: Any, cfg: dict[str, Any], ollama: Any
) -> None:
    ollama.settings.missing_usage = True
    ollama.settings.chunks = 7
    recorder = Recorder()
    async with serve(cfg, plugins=[TokenAuth(), recorder]) as gw:
        async with gw.request(
            "POST", "/v1/chat/completions", json={**CHAT, "stream": True}, headers=bearer(1, "pro")
        ) as r:
            events = sse_events(await r.text())
    assert events[-1] == "[DONE]"
    usage = recorder.settled[0].usage
    assert (usage.completion_tokens, usage.source) == (7, "estimated")
    assert recorder.settled[0].outcome == "ok"


async def test_the_gateway_never_asks_the_upstream_for_a_compressed_answer(
    serve: Any, cfg: dict[str, Any], ollama: Any
) -> None:
    async with serve(cfg, plugins=[TokenAuth()]) as gw:
        async with gw.request("POST", "/v1/chat/completions", json=CHAT, headers=bearer(1, "pro")) as r:
            assert r.status == 200
    assert "accept-encoding" not in ollama.served[-1]["headers"]
