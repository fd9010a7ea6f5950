"""Where a request's time went: the `server-timing` header on every /v1 answer and `timing_ms` in the log."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from edge.context import RequestContext
from edge.errors import TooManyRequests
from edge.hookspecs import hookimpl
from tests.conftest import base_config
from tests.support.auth import TokenAuth, bearer
from tests.support.bodies import CHAT
from tests.support.recorder import Recorder

BILLED = ["read", "auth", "authorize", "reserve", "route", "upstream"]


@pytest.fixture
def cfg(ollama: Any, sqlite_url: str) -> dict[str, Any]:
    return base_config(ollama_url=ollama.url, database_url=sqlite_url)


def phases(header: str) -> list[tuple[str, float]]:
    """`read;dur=0.21, auth;dur=0.05` as [("read", 0.21), ("auth", 0.05)]."""
    out = []
    for part in header.split(", "):
        name, _, dur = part.partition(";dur=")
        out.append((name, float(dur)))
    return out


class Slow:
    """Sleeps in the hook it is told to, so the time must show up in that phase and no other."""

    name = "slow"

    def __init__(self, **seconds: float) -> None:
        self.seconds = seconds

    async def _nap(self, hook: str) -> None:
        await asyncio.sleep(self.seconds.get(hook, 0.0))

    @hookimpl
    async def resayil_authorize(self, ctx: RequestContext) -> None:
        await self._nap("authorize")

    @hookimpl
    async def resayil_route(self, ctx: RequestContext) -> None:
        await self._nap("route")


async def test_a_stream_reports_each_phase_before_its_first_byte(serve: Any, cfg: dict[str, Any], ollama: Any) -> None:
    ollama.settings.latency = 0.06  # the model's own time before it answers
    async with serve(cfg, plugins=[TokenAuth(), Recorder(), Slow(route=0.04)]) as gw:
        started = time.perf_counter()
        async with gw.request(
            "POST", "/v1/chat/completions", json={**CHAT, "stream": True}, headers=bearer(1, "pro")
        ) as r:
            first_byte = time.perf_counter() - started
            assert r.status == 200
            timing = phases(r.headers["server-timing"])
            await r.read()
    assert [name for name, _ in timing] == BILLED
    took = dict(timing)
    assert all(ms >= 0 for ms in took.values())
    assert took["upstream"] >= 60 and took["route"] >= 40  # each wait is in its own phase...
    assert took["authorize"] < 40 and took["reserve"] < 40  # ...and not in the others
    # The phases are what happened before the answer started, so together they fit in its time to first byte.
    assert sum(took.values()) <= first_byte * 1000


async def test_a_whole_answer_reports_the_same_phases(serve: Any, cfg: dict[str, Any]) -> None:
    async with serve(cfg, plugins=[TokenAuth(), Slow(authorize=0.03)]) as gw:
        async with gw.request("POST", "/v1/chat/completions", json=CHAT, headers=bearer(1, "pro")) as r:
            assert r.status == 200
            timing = dict(phases(r.headers["server-timing"]))
            assert (await r.json())["object"] == "chat.completion"
    assert list(timing) == BILLED
    assert timing["authorize"] >= 30 and timing["route"] < 30


async def test_a_refusal_reports_the_phases_it_went_through(serve: Any, cfg: dict[str, Any]) -> None:
    class Limit:
        name = "limit"

        @hookimpl
        async def resayil_authorize(self, ctx: RequestContext) -> None:
            raise TooManyRequests(
                "Rate limit reached for requests.", code="rate_limit_exceeded", headers={"retry-after": "7"}
            )

    async with serve(cfg, plugins=[TokenAuth(), Limit()]) as gw:
        async with gw.request("POST", "/v1/chat/completions", json=CHAT, headers=bearer(1, "pro")) as r:
            assert r.status == 429
            assert r.headers["retry-after"] == "7"
            assert [name for name, _ in phases(r.headers["server-timing"])] == ["read", "auth"]
            assert (await r.json())["error"]["code"] == "rate_limit_exceeded"
        async with gw.request("POST", "/v1/chat/completions", json=CHAT) as r:
            assert r.status == 401
            assert [name for name, _ in phases(r.headers["server-timing"])] == ["read"]
        async with gw.request("GET", "/v1/models", headers=bearer(1, "pro")) as r:
            assert r.status == 429
            assert [name for name, _ in phases(r.headers["server-timing"])] == ["auth"]


async def test_a_retried_upstream_shows_both_attempts_and_the_log_adds_them_up(
    serve: Any, cfg: dict[str, Any], ollama: Any, caplog: pytest.LogCaptureFixture
) -> None:
    class RetryOnce:
        name = "retry_once"

        def __init__(self) -> None:
            self.retried = 0

        @hookimpl
        async def resayil_retry(self, ctx: RequestContext, error: Exception) -> bool | None:
            self.retried += 1
            await asyncio.sleep(0.02)
            return True if self.retried == 1 else None

    ollama.settings.fail_status = 503
    ollama.settings.fail_times = 1
    caplog.set_level(logging.INFO, logger="resayil.access")
    retry = RetryOnce()
    async with serve(cfg, plugins=[TokenAuth(), retry]) as gw:
        async with gw.request("POST", "/v1/chat/completions", json=CHAT, headers=bearer(1, "pro")) as r:
            assert r.status == 200
            timing = phases(r.headers["server-timing"])
    assert retry.retried == 1
    assert [name for name, _ in timing] == [*BILLED, "retry", "upstream"]
    assert dict(timing)["retry"] >= 20
    logged = [rec.fields for rec in caplog.records if getattr(rec, "fields", {}).get("path") == "/v1/chat/completions"]
    assert len(logged) == 1
    fields = logged[0]["timing_ms"]
    assert list(fields) == [*BILLED, "retry"]
    upstreams = [ms for name, ms in timing if name == "upstream"]
    assert fields["upstream"] == pytest.approx(sum(upstreams), abs=0.02)
