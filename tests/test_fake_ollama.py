"""Tests of the fake Ollama server used by the gateway's tests and benchmarks."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable

import aiohttp
import orjson
import pytest

from tests.fakes.ollama import BUSY_MESSAGE, FakeOllama, FakeSettings, run_fake

pytestmark = pytest.mark.asyncio

Json = dict[str, object]
CHAT: Json = {"model": "m1", "messages": [{"role": "user", "content": "hello world"}]}  # 11 bytes -> 3 + 4


@pytest.fixture
async def fake() -> AsyncIterator[FakeOllama]:
    async with run_fake() as f:
        yield f


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def sse_events(raw: bytes) -> list[bytes]:
    assert raw.endswith(b"\n\n")
    events = raw[:-2].split(b"\n\n")
    assert all(e.startswith(b"data: ") for e in events)
    return [e[len(b"data: ") :] for e in events]


def chunk_json(events: list[bytes]) -> list[Json]:
    out: list[Json] = []
    for e in events:
        if e != b"[DONE]":
            loaded = orjson.loads(e)
            assert isinstance(loaded, dict)
            out.append(loaded)
    return out


async def wait_until(condition: Callable[[], bool]) -> None:
    for _ in range(5000):  # up to ~5 s
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition not reached")


def arrived(fake: FakeOllama, n: int) -> Callable[[], bool]:
    return lambda: fake.arrivals == n


async def post(
    http: aiohttp.ClientSession, url: str, body: Json, headers: dict[str, str] | None = None
) -> tuple[int, Json]:
    async with http.post(url, json=body, headers=headers) as r:
        data = await r.json()
        assert isinstance(data, dict)
        return r.status, data


async def test_non_stream_body_usage_and_record(fake: FakeOllama, http: aiohttp.ClientSession) -> None:
    body: Json = {**CHAT, "temperature": 0.2, "extra": {"kept": [1, 2]}}
    status, data = await post(http, f"{fake.url}/v1/chat/completions", body, headers={"X-Trace": "abc"})
    assert status == 200
    assert data["object"] == "chat.completion"
    assert str(data["id"]).startswith("chatcmpl-")
    assert isinstance(data["created"], int)
    assert data["model"] == "m1"
    assert data["system_fingerprint"] == "fp_ollama"
    assert data["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "tok0 tok1 tok2 tok3 tok4 "},
            "finish_reason": "stop",
        }
    ]
    assert data["usage"] == {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}
    [rec] = fake.served
    assert rec["body"] == body
    assert rec["model"] == "m1"
    assert rec["stream"] is False
    assert rec["arrival"] == 1
    assert rec["path"] == "/v1/chat/completions"
    assert rec["headers"]["x-trace"] == "abc"


async def test_prompt_tokens_with_content_parts(fake: FakeOllama, http: aiohttp.ClientSession) -> None:
    parts = [{"type": "text", "text": "héllo"}, {"type": "image_url", "image_url": {"url": "x"}}]
    messages = [{"role": "system", "content": "abcdefghi"}, {"role": "user", "content": parts}]
    _, data = await post(http, f"{fake.url}/v1/chat/completions", {"model": "m", "messages": messages})
    usage = data["usage"]
    assert isinstance(usage, dict)
    assert usage["prompt_tokens"] == (3 + 4) + (2 + 4)  # 9 bytes -> 3; "héllo" 6 bytes -> 2


async def test_stream_without_usage(fake: FakeOllama, http: aiohttp.ClientSession) -> None:
    fake.settings.chunks = 3
    async with http.post(f"{fake.url}/v1/chat/completions", json={**CHAT, "stream": True}) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/event-stream")
        events = sse_events(await r.read())
    assert events[-1] == b"[DONE]"
    chunks = chunk_json(events)
    assert len(chunks) == 3
    assert len({c["id"] for c in chunks}) == 1
    for i, c in enumerate(chunks):
        assert "usage" not in c
        assert c["object"] == "chat.completion.chunk"
        assert c["system_fingerprint"] == "fp_ollama"
        choices = c["choices"]
        assert isinstance(choices, list)
        assert len(choices) == 1
        choice = choices[0]
        assert choice["delta"] == {"role": "assistant", "content": f"tok{i} "}
        assert choice["finish_reason"] == ("stop" if i == 2 else None)
    assert fake.served[0]["stream"] is True


async def test_stream_usage_chunk_only_when_asked(fake: FakeOllama, http: aiohttp.ClientSession) -> None:
    body: Json = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    async with http.post(f"{fake.url}/v1/chat/completions", json=body) as r:
        events = sse_events(await r.read())
    assert events[-1] == b"[DONE]"
    chunks = chunk_json(events)
    assert len(chunks) == 6
    assert all("usage" not in c for c in chunks[:-1])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}
    assert chunks[-1]["id"] == chunks[0]["id"]


async def test_missing_usage(fake: FakeOllama, http: aiohttp.ClientSession) -> None:
    fake.settings.missing_usage = True
    body: Json = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    async with http.post(f"{fake.url}/v1/chat/completions", json=body) as r:
        chunks = chunk_json(sse_events(await r.read()))
    assert len(chunks) == 5
    assert all("usage" not in c for c in chunks)
    _, data = await post(http, f"{fake.url}/v1/chat/completions", CHAT)
    assert "usage" not in data


async def test_max_tokens_gives_length(fake: FakeOllama, http: aiohttp.ClientSession) -> None:
    key = "max_tokens"
    _, data = await post(http, f"{fake.url}/v1/chat/completions", {**CHAT, key: 2})
    assert data["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": "tok0 tok1 "}, "finish_reason": "length"}
    ]
    usage = data["usage"]
    assert isinstance(usage, dict)
    assert usage["completion_tokens"] == 2
    body: Json = {**CHAT, key: 2, "stream": True, "stream_options": {"include_usage": True}}
    async with http.post(f"{fake.url}/v1/chat/completions", json=body) as r:
        chunks = chunk_json(sse_events(await r.read()))
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None, "length"]  # type: ignore[index]
    assert chunks[-1]["usage"] == {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}
    _, data = await post(http, f"{fake.url}/v1/chat/completions", {**CHAT, key: 50})
    assert data["choices"][0]["finish_reason"] == "stop"  # type: ignore[index]


async def test_parallel_one_serves_in_arrival_order(fake: FakeOllama, http: aiohttp.ClientSession) -> None:
    fake.settings.parallel = 1
    fake.settings.latency = 0.05
    tasks = []
    for i in range(4):
        body: Json = {**CHAT, "seq": i}
        tasks.append(asyncio.create_task(post(http, f"{fake.url}/v1/chat/completions", body)))
        await wait_until(arrived(fake, i + 1))  # deterministic arrival order
    assert fake.in_flight == 1
    assert fake.waiting == 3
    results = await asyncio.gather(*tasks)
    assert [s for s, _ in results] == [200] * 4
    assert [r["body"]["seq"] for r in fake.served] == [0, 1, 2, 3]
    assert [r["arrival"] for r in fake.served] == [1, 2, 3, 4]
    assert fake.max_in_flight_seen == 1
    assert (fake.in_flight, fake.waiting) == (0, 0)


async def test_unlimited_parallel_counts_peak(fake: FakeOllama, http: aiohttp.ClientSession) -> None:
    fake.settings.latency = 0.05
    results = await asyncio.gather(*(post(http, f"{fake.url}/v1/chat/completions", CHAT) for _ in range(5)))
    assert all(s == 200 for s, _ in results)
    assert fake.max_in_flight_seen == 5


async def test_queue_full_gives_503(fake: FakeOllama, http: aiohttp.ClientSession) -> None:
    fake.settings.parallel = 1
    fake.settings.max_queue = 1
    fake.settings.latency = 0.1
    first = asyncio.create_task(post(http, f"{fake.url}/v1/chat/completions", CHAT))
    second = asyncio.create_task(post(http, f"{fake.url}/api/chat", {**CHAT, "stream": False}))
    await wait_until(lambda: fake.waiting == 1)
    status, data = await post(http, f"{fake.url}/v1/chat/completions", CHAT)
    assert status == 503
    assert data == {"error": {"message": BUSY_MESSAGE, "type": "api_error", "param": None, "code": None}}
    status, data = await post(http, f"{fake.url}/api/chat", CHAT)
    assert (status, data) == (503, {"error": BUSY_MESSAGE})
    assert [(await first)[0], (await second)[0]] == [200, 200]
    assert len(fake.served) == 2
    assert fake.rejected == 2


async def test_cancelled_waiter_leaves_queue(fake: FakeOllama) -> None:
    fake.settings.parallel = 1
    fake.settings.latency = 0.2
    async with aiohttp.ClientSession() as http:
        first = asyncio.create_task(post(http, f"{fake.url}/v1/chat/completions", CHAT))
        await wait_until(lambda: fake.in_flight == 1)
        async with aiohttp.ClientSession() as other:
            waiter = asyncio.create_task(post(other, f"{fake.url}/v1/chat/completions", CHAT))
            await wait_until(lambda: fake.waiting == 1)
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
        await wait_until(lambda: fake.waiting == 0)  # the server notices the disconnect, drops it
        assert fake.in_flight == 1
        assert (await first)[0] == 200
    assert (fake.in_flight, fake.waiting, len(fake.served)) == (0, 0, 1)


async def test_abort_after_cuts_stream(fake: FakeOllama, http: aiohttp.ClientSession) -> None:
    fake.settings.abort_after = 2
    lines: list[bytes] = []
    async with http.post(f"{fake.url}/v1/chat/completions", json={**CHAT, "stream": True}) as r:
        assert r.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            async for line in r.content:
                lines.append(line)
    events = [line for line in lines if line.startswith(b"data: ")]
    assert len(events) == 2
    assert b"[DONE]" not in b"".join(lines)
    await asyncio.sleep(0.01)
    assert fake.in_flight == 0
    fake.settings.abort_after = None
    status, _ = await post(http, f"{fake.url}/v1/chat/completions", CHAT)
    assert status == 200


async def test_error_after_v1(fake: FakeOllama, http: aiohttp.ClientSession) -> None:
    fake.settings.error_after = 1
    async with http.post(f"{fake.url}/v1/chat/completions", json={**CHAT, "stream": True}) as r:
        assert r.status == 200
        events = sse_events(await r.read())
    assert len(events) == 2
    assert b"[DONE]" not in events
    err = orjson.loads(events[1])["error"]
    assert err["type"] == "api_error"
    assert isinstance(err["message"], str)


async def test_error_after_native(fake: FakeOllama, http: aiohttp.ClientSession) -> None:
    fake.settings.error_after = 3
    async with http.post(f"{fake.url}/api/chat", json=CHAT) as r:
        assert r.status == 200
        lines = [orjson.loads(x) for x in (await r.read()).splitlines()]
    assert len(lines) == 4
    assert all(line["done"] is False for line in lines[:3])
    assert set(lines[3]) == {"error"}


async def test_fail_status_and_fail_times(fake: FakeOllama, http: aiohttp.ClientSession) -> None:
    fake.settings.fail_status = 500
    fake.settings.fail_times = 2
    url = f"{fake.url}/v1/chat/completions"
    statuses = [(await post(http, url, CHAT))[0] for _ in range(3)]
    assert statuses == [500, 500, 200]
    assert fake.failures == 2
    assert len(fake.served) == 1
    fake.reset()
    fake.settings.fail_times = 0
    fake.settings.fail_status = 503
    fake.settings.fail_body = {"error": "overloaded"}
    for _ in range(3):
        assert await post(http, url, CHAT) == (503, {"error": "overloaded"})
    status, data = await post(http, f"{fake.url}/v1/embeddings", {"model": "e", "input": "x"})
    assert (status, data) == (503, {"error": "overloaded"})
    fake.settings.fail_body = "boom"
    assert await post(http, f"{fake.url}/api/chat", CHAT) == (503, {"error": "boom"})
    status, data = await post(http, url, CHAT)
    assert data["error"] == {"message": "boom", "type": "api_error", "param": None, "code": None}


async def test_require_key(http: aiohttp.ClientSession) -> None:
    async with run_fake(FakeSettings(require_key="sk-cloud", name="cloud")) as fake:
        url = f"{fake.url}/v1/chat/completions"
        status, data = await post(http, url, CHAT)
        assert status == 401
        assert data["error"]["message"] == "unauthorized"  # type: ignore[index]
        status, _ = await post(http, url, CHAT, headers={"Authorization": "Bearer wrong"})
        assert status == 401
        assert await post(http, f"{fake.url}/api/chat", CHAT) == (401, {"error": "unauthorized"})
        status, data = await post(http, url, CHAT, headers={"Authorization": "Bearer sk-cloud"})
        assert status == 200
        assert data["system_fingerprint"] == "fp_cloud"
        assert fake.served[0]["headers"]["authorization"] == "Bearer sk-cloud"


async def test_native_chat_stream(fake: FakeOllama, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{fake.url}/api/chat", json=CHAT) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("application/x-ndjson")
        raw = await r.read()
    assert raw.endswith(b"\n")
    lines = [orjson.loads(x) for x in raw.splitlines()]
    assert len(lines) == 6
    assert [x["message"]["content"] for x in lines[:5]] == [f"tok{i} " for i in range(5)]
    assert all(x["done"] is False and x["model"] == "m1" for x in lines[:5])
    final = lines[5]
    assert final["done"] is True
    assert final["done_reason"] == "stop"
    assert final["prompt_eval_count"] == 7
    assert final["eval_count"] == 5
    assert final["message"] == {"role": "assistant", "content": ""}
    for key in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(final[key], int)
    assert str(final["created_at"]).endswith("Z")
    assert fake.served[0]["stream"] is True


async def test_native_chat_non_stream_and_num_predict(fake: FakeOllama, http: aiohttp.ClientSession) -> None:
    body: Json = {**CHAT, "stream": False, "options": {"num_predict": 3}}
    status, data = await post(http, f"{fake.url}/api/chat", body)
    assert status == 200
    assert data["message"] == {"role": "assistant", "content": "tok0 tok1 tok2 "}
    assert data["done"] is True
    assert data["done_reason"] == "length"
    assert (data["prompt_eval_count"], data["eval_count"]) == (7, 3)
    fake.settings.missing_usage = True
    _, data = await post(http, f"{fake.url}/api/chat", body)
    assert "eval_count" not in data
    assert "prompt_eval_count" not in data


async def test_embeddings(fake: FakeOllama, http: aiohttp.ClientSession) -> None:
    status, data = await post(http, f"{fake.url}/v1/embeddings", {"model": "e", "input": ["abcde", "xy"]})
    assert status == 200
    assert data["object"] == "list"
    assert data["model"] == "e"
    assert data["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    items = data["data"]
    assert isinstance(items, list)
    assert [d["index"] for d in items] == [0, 1]
    assert all(d["object"] == "embedding" and len(d["embedding"]) == 8 for d in items)
    _, again = await post(http, f"{fake.url}/v1/embeddings", {"model": "e", "input": "abcde"})
    assert again["data"][0]["embedding"] == items[0]["embedding"]  # type: ignore[index]
    status, data = await post(http, f"{fake.url}/v1/embeddings", {"model": "e", "input": 5})
    assert status == 400


async def test_unknown_model_and_bad_json(http: aiohttp.ClientSession) -> None:
    async with run_fake(FakeSettings(models=["llama3.2:latest"])) as fake:
        msg = 'model "nope" not found, try pulling it first'
        assert await post(http, f"{fake.url}/api/chat", {**CHAT, "model": "nope"}) == (404, {"error": msg})
        status, data = await post(http, f"{fake.url}/v1/chat/completions", {**CHAT, "model": "nope"})
        assert status == 404
        assert data["error"] == {"message": msg, "type": "not_found_error", "param": None, "code": None}
        status, _ = await post(http, f"{fake.url}/v1/chat/completions", {**CHAT, "model": "llama3.2"})
        assert status == 200
        async with http.post(f"{fake.url}/api/chat", data=b"{not json") as r:
            assert r.status == 400
            assert isinstance((await r.json())["error"], str)
        async with http.post(f"{fake.url}/v1/chat/completions", data=b"[") as r:
            assert r.status == 400
            assert (await r.json())["error"]["type"] == "invalid_request_error"
        assert fake.served[0]["model"] == "llama3.2"


async def test_listing_endpoints(http: aiohttp.ClientSession) -> None:
    async with run_fake(FakeSettings(models=["a:latest", "b:7b"])) as fake:
        async with http.get(f"{fake.url}/api/version") as r:
            assert await r.json() == {"version": "0.12.0"}
        async with http.get(f"{fake.url}/v1/models") as r:
            data = await r.json()
        assert data["object"] == "list"
        assert [(m["id"], m["object"]) for m in data["data"]] == [("a:latest", "model"), ("b:7b", "model")]
        async with http.get(f"{fake.url}/api/tags") as r:
            assert [m["name"] for m in (await r.json())["models"]] == ["a:latest", "b:7b"]
        async with http.get(f"{fake.url}/api/ps") as r:
            assert (await r.json())["models"] == []
        await post(http, f"{fake.url}/api/chat", {**CHAT, "model": "b:7b", "stream": False})
        async with http.get(f"{fake.url}/api/ps") as r:
            assert [m["name"] for m in (await r.json())["models"]] == ["b:7b"]


async def test_chunk_interval_and_latency(fake: FakeOllama, http: aiohttp.ClientSession) -> None:
    fake.settings.latency = 0.05
    fake.settings.chunk_interval = 0.02
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with http.post(f"{fake.url}/v1/chat/completions", json={**CHAT, "stream": True}) as r:
        first = await r.content.readline()
        first_at = loop.time() - start
        await r.read()
    total = loop.time() - start
    assert first.startswith(b"data: ")
    assert first_at >= 0.05
    assert total >= 0.05 + 4 * 0.02


async def test_process_mode() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.fakes.ollama",
        "--port",
        "0",
        "--chunks",
        "2",
        "--name",
        "local",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode().strip()
        assert line.startswith("ready http://127.0.0.1:")
        url = line.split(" ", 1)[1]
        async with aiohttp.ClientSession() as http:
            _, data = await post(http, f"{url}/v1/chat/completions", CHAT)
        assert data["system_fingerprint"] == "fp_local"
        assert data["choices"][0]["message"]["content"] == "tok0 tok1 "  # type: ignore[index]
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 10) == 0
