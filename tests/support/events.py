"""An event of a plugin's own and a consumer that de-duplicates, for tests/test_edge_events.py.

Config: `{name: events_test, module: tests.support.events}` on a gateway with `redis_url`.
`POST /api/events-test/publish` publishes a `Ping` in a transaction and answers its id. The consumer
records every call in `ATTEMPTS_KEY` (with the worker's pid) and, de-duplicating on the event id, its
effect once in `EFFECTS_KEY`. While `HANG_KEY` exists a call hangs before its effect, so a test can kill
the worker that is delivering.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from edge.events import Event
from edge.hookspecs import hookimpl

if TYPE_CHECKING:
    from edge.gateway import Gateway

ATTEMPTS_KEY = "events-test:attempts"
EFFECTS_KEY = "events-test:effects"
SEEN_KEY = "events-test:seen"
HANG_KEY = "events-test:hang"


@dataclass(frozen=True, kw_only=True)
class Ping(Event):
    """A plugin's own event type, registered through `resayil_event_types`."""

    event_name: ClassVar[str] = "test.pinged"
    note: str


class Plugin:
    """Publishes `Ping`s on request and consumes them into Redis."""

    @hookimpl
    async def resayil_startup(self, gateway: Gateway) -> None:
        self.gateway = gateway

    @hookimpl
    def resayil_event_types(self) -> list[type[Event]]:
        return [Ping]

    @hookimpl
    def resayil_routes(self, gateway: Gateway) -> list[BaseRoute]:
        return [Route("/api/events-test/publish", self.publish, methods=["POST"])]

    async def publish(self, request: Request) -> JSONResponse:
        ping = Ping(note="crash test")
        async with self.gateway.database.begin() as conn:
            await self.gateway.events.publish(ping, conn=conn)
        return JSONResponse({"id": ping.id})

    @hookimpl
    async def resayil_event(self, event: Event) -> None:
        redis = self.gateway.redis
        assert redis is not None, "the events test plugin records into Redis"
        if not isinstance(event, Ping):
            return
        await redis.rpush(ATTEMPTS_KEY, orjson.dumps({"id": event.id, "pid": os.getpid()}))
        if await redis.exists(HANG_KEY):
            await asyncio.sleep(120)
        if await redis.sadd(SEEN_KEY, event.id):
            await redis.rpush(EFFECTS_KEY, orjson.dumps({"id": event.id, "pid": os.getpid()}))
