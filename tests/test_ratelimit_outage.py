"""Redis unreachable: fail closed (503) or fail open (per-process limits), reported by /readyz, logged sparingly."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from tests.conftest import base_config
from tests.support.auth import TokenAuth, bearer

# These tests read the English answers: their callers are English-speaking unless a test says otherwise.
ENGLISH = TokenAuth.Settings(locale="en")

CHAT = {"model": "llama3.2:3b", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 2}
# Nothing listens on port 1: every connection is refused at once.
DEAD_REDIS = "redis://127.0.0.1:1/0"


def config(ollama: Any, sqlite_url: str, **settings: Any) -> dict[str, Any]:
    return base_config(
        ollama_url=ollama.url,
        database_url=sqlite_url,
        plugins=[{"name": "ratelimit", "settings": {"redis_url": DEAD_REDIS, **settings}}],
    )


def outage_logs(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "resayil.ratelimit" and r.levelno == logging.ERROR]


async def chat(gw: Any, account: int = 1) -> tuple[int, Any, Any]:
    async with gw.request("POST", "/v1/chat/completions", json=CHAT, headers=bearer(account)) as r:
        return r.status, r.headers, await r.json()


async def test_fail_closed_is_the_default_503_and_not_ready(
    serve: Any, ollama: Any, sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # retry_seconds 0: every request tries Redis again, and still the log speaks once.
    async with serve(config(ollama, sqlite_url, retry_seconds=0), plugins=[TokenAuth(ENGLISH)]) as gw:
        results = [await chat(gw) for _ in range(5)]
        async with gw.request("GET", "/readyz") as r:
            ready_status, ready = r.status, await r.json()
    for status, headers, body in results:
        assert status == 503
        assert body["error"]["code"] == "rate_limiter_unavailable"
        assert body["error"]["type"] == "server_error"
        assert headers["retry-after"] == "1"
    assert ollama.served == []
    assert ready_status == 503 and ready["status"] == "not_ready"
    assert ready["parts"]["ratelimit"] == {
        "ok": False,
        "mode": "fail_closed",
        "redis": "unreachable",
        "error": "ConnectionError",
    }
    logged = outage_logs(caplog)
    assert len(logged) == 1
    assert logged[0].fields["mode"] == "fail_closed"  # type: ignore[attr-defined]
    assert logged[0].fields["redis"] == DEAD_REDIS  # type: ignore[attr-defined]


async def test_fail_open_keeps_serving_with_per_process_limits(
    serve: Any, ollama: Any, sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = config(ollama, sqlite_url, on_redis_error="fail_open", retry_seconds=0)
    async with serve(cfg, plugins=[TokenAuth(ENGLISH)]) as gw:
        results = [await chat(gw) for _ in range(11)]
        async with gw.request("GET", "/readyz") as r:
            ready_status, ready = r.status, await r.json()
    assert [status for status, _, _ in results] == [200] * 10 + [429]
    assert results[3][1]["x-ratelimit-remaining-requests"] == "6"
    assert results[10][2]["error"]["code"] == "rate_limit_exceeded"
    # Serving on purpose, so ready; the part says how.
    assert ready_status == 200
    assert ready["parts"]["ratelimit"] == {
        "ok": True,
        "mode": "fail_open",
        "redis": "unreachable",
        "error": "ConnectionError",
    }
    assert len(outage_logs(caplog)) == 1


async def test_the_outage_is_logged_again_after_the_interval(
    serve: Any, ollama: Any, sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = config(ollama, sqlite_url, retry_seconds=0, log_interval_seconds=0.3)
    async with serve(cfg, plugins=[TokenAuth(ENGLISH)]) as gw:
        for _ in range(3):
            await chat(gw)
        await asyncio.sleep(0.35)
        for _ in range(3):
            await chat(gw)
    logged = outage_logs(caplog)
    assert len(logged) == 2
    assert logged[1].fields["failures"] == 3  # type: ignore[attr-defined]


class Switch:
    """A TCP relay in front of the real Redis that the test can cut and restore, like a network outage."""

    def __init__(self) -> None:
        self.port = 0
        self.server: asyncio.Server | None = None
        self.pipes: set[asyncio.StreamWriter] = set()

    async def up(self) -> None:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", self.port, reuse_address=True)
        self.port = self.server.sockets[0].getsockname()[1]

    async def down(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.pipes):
            writer.transport.abort()
        await self.server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", 6379)
        self.pipes |= {writer, up_writer}

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        self.pipes -= {writer, up_writer}


async def test_redis_going_away_and_coming_back(
    serve: Any, ollama: Any, sqlite_url: str, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    switch = Switch()
    await switch.up()
    db = redis_url.rsplit("/", 1)[1]
    cfg = config(ollama, sqlite_url, redis_url=f"redis://127.0.0.1:{switch.port}/{db}", retry_seconds=0.3)
    async with serve(cfg, plugins=[TokenAuth(ENGLISH)]) as gw:
        assert (await chat(gw))[0] == 200
        await switch.down()
        down = [(await chat(gw))[0] for _ in range(3)]
        async with gw.request("GET", "/readyz") as r:
            assert r.status == 503
        await switch.up()
        # Within the retry interval the limiter does not even try Redis.
        assert (await chat(gw))[0] == 503
        await asyncio.sleep(0.35)
        status, headers, _ = await chat(gw)
        async with gw.request("GET", "/readyz") as r:
            ready = await r.json()
        await switch.down()
    assert down == [503, 503, 503]
    # The window in Redis survived the outage: one request before, this one after.
    assert status == 200 and headers["x-ratelimit-remaining-requests"] == "8"
    assert ready["parts"]["ratelimit"] == {"ok": True, "mode": "redis"}
    assert len(outage_logs(caplog)) == 1
    back = [r for r in caplog.records if r.name == "resayil.ratelimit" and "reachable again" in r.getMessage()]
    assert len(back) == 1
