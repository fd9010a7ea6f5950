"""A configured plugin whose `trylast` authorize refuses one tier: the shape of a future check (a team's
budget, a second limit) that would run after the rate limiter had it stayed in authorize."""

from __future__ import annotations

from dataclasses import dataclass

from edge.context import RequestContext
from edge.errors import Forbidden
from edge.hookspecs import hookimpl


class Plugin:
    """Refuses `refuse_tier` with 403 `late_refusal`, after every plain authorize."""

    @dataclass
    class Settings:
        refuse_tier: str = "basic"

    def __init__(self, settings: Plugin.Settings) -> None:
        self.settings = settings

    @hookimpl(trylast=True)
    async def resayil_authorize(self, ctx: RequestContext) -> None:
        if ctx.principal is not None and ctx.principal.tier == self.settings.refuse_tier:
            raise Forbidden("Refused after every other check.", code="late_refusal")
