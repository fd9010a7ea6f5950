"""A plugin module the config can name with `module:`, for tests of plugin loading."""

from __future__ import annotations

from dataclasses import dataclass

from edge.context import RequestContext
from edge.hookspecs import hookimpl


class Plugin:
    """Does nothing but take part in `authorize`."""

    @dataclass
    class Settings:
        note: str = ""
        token: str | None = None

    def __init__(self, settings: Plugin.Settings) -> None:
        self.settings = settings

    @hookimpl
    async def resayil_authorize(self, ctx: RequestContext) -> None:
        return None
