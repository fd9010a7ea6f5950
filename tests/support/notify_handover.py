"""Hands one fixed event straight to a gateway process's notify plugin, as a redelivery would (after a
delivery lease passed, another worker gets the same event, same id), for tests/test_notify_processes.py.

Config: `{name: notify_handover, module: tests.support.notify_handover}` after `notify`.
`POST /api/notify-test/handover` hands over `cloud.budget_80` for 2026-01-01 under the event id `HANDED_ID`.
"""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from edge.events import CloudBudget80
from edge.hookspecs import hookimpl

if TYPE_CHECKING:
    from edge.gateway import Gateway

HANDED_ID = "0123456789abcdef0123456789abcdef"


class Plugin:
    """One test route; the notify plugin does the rest."""

    @hookimpl
    async def resayil_startup(self, gateway: Gateway) -> None:
        self.gateway = gateway

    @hookimpl
    def resayil_routes(self, gateway: Gateway) -> list[BaseRoute]:
        return [Route("/api/notify-test/handover", self.handover, methods=["POST"])]

    async def handover(self, request: Request) -> JSONResponse:
        event = CloudBudget80(id=HANDED_ID, day=date(2026, 1, 1), used=4, cap=5, percent=80)
        await self.gateway.plugin("notify").resayil_event(event)
        return JSONResponse({"id": event.id})
