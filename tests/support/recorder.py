"""The one recorder: what the chain did to each request, and every published event.

Inline: `recorder = Recorder()`, `serve(config, plugins=[recorder])`, then `await recorder.wait_settled(3)`
instead of sleeping. In a gateway process: `{name: test_recorder, module: tests.support.recorder,
settings: {events_list: some:redis:key}}` pushes each event to that Redis list, for the test to read.

Its settle runs `trylast`, after the plugins that settle for real (credits, failover), so a settlement it has
seen is a finished one.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from edge.context import RequestContext
from edge.errors import PaymentRequired
from edge.events import Event
from edge.hookspecs import hookimpl

if TYPE_CHECKING:
    from edge.gateway import Gateway


class Recorder:
    """Keeps the request ids that reached authorize and reserve, the settled contexts and the events."""

    name = "recorder"

    @dataclass
    class Settings:
        refuse_reserve: bool = False
        events_list: str | None = None

    def __init__(self, settings: Recorder.Settings | None = None) -> None:
        self.settings = settings or Recorder.Settings()
        self.authorized: list[str] = []
        self.reserved: list[str] = []
        self.settled: list[RequestContext] = []
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.gateway: Gateway | None = None
        self._changed = asyncio.Event()

    @hookimpl
    async def resayil_startup(self, gateway: Gateway) -> None:
        self.gateway = gateway

    @hookimpl
    async def resayil_authorize(self, ctx: RequestContext) -> None:
        self.authorized.append(ctx.request_id)

    @hookimpl
    async def resayil_reserve(self, ctx: RequestContext) -> None:
        self.reserved.append(ctx.request_id)
        if self.settings.refuse_reserve:
            raise PaymentRequired("No credit left.", code="insufficient_quota")

    @hookimpl(trylast=True)
    async def resayil_settle(self, ctx: RequestContext) -> None:
        self.settled.append(ctx)
        self._changed.set()

    @hookimpl
    async def resayil_event(self, event: Event) -> None:
        name, payload = event.event_name, dataclasses.asdict(event)
        self.events.append((name, payload))
        self._changed.set()
        redis = self.gateway.redis if self.gateway is not None else None
        if self.settings.events_list and redis is not None:
            await redis.rpush(self.settings.events_list, orjson.dumps({"name": name, **payload}))

    def names(self) -> list[str]:
        return [name for name, _ in self.events]

    def named(self, name: str) -> list[dict[str, Any]]:
        return [payload for event, payload in self.events if event == name]

    def settle_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for ctx in self.settled:
            counts[ctx.request_id] = counts.get(ctx.request_id, 0) + 1
        return counts

    async def wait_settled(self, count: int, *, within: float = 5.0) -> list[RequestContext]:
        """The settled contexts once exactly `count` requests settled (settle may finish after the reply)."""
        await self._wait(lambda: len(self.settled) >= count, within)
        assert len(self.settled) == count, f"{len(self.settled)} settled, expected {count}"
        return self.settled

    async def wait_events(self, count: int, *, within: float = 5.0) -> list[tuple[str, dict[str, Any]]]:
        """The events once at least `count` were published (delivery never blocks the request)."""
        await self._wait(lambda: len(self.events) >= count, within)
        assert len(self.events) >= count, f"{len(self.events)} events, expected {count}"
        return self.events

    async def _wait(self, done: Any, within: float) -> None:
        try:
            async with asyncio.timeout(within):
                while not done():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            pass


Plugin = Recorder
