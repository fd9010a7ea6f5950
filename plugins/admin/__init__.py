"""The admins' API: the platform's overview, the audit trail, users (search, one user's page, ban and
unban) and CSV exports.

The plugin is settings and hooks. Query strings are checked in `filters.py`, the audit trail is read in
`audit_rows.py`, the overview is put together in `overview.py`, the routes are `routes.py` and what they
answer is `answers.py`. It owns no tables: users and keys come from the ACCOUNTS service, usage and the
ledger from CREDITS, orders from BILLING, upstreams from FAILOVER, and the audit rows it writes go to the
core's audit_log (edge/audit.py) in the same transaction as the change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from edge.hookspecs import hookimpl
from edge.settings import ConfigError
from plugins.admin import routes

if TYPE_CHECKING:
    from starlette.routing import BaseRoute

    from edge.gateway import Gateway


class Plugin:
    """Serves /api/admin/overview, /api/admin/audit, /api/admin/users[/{id}[/ban|/unban]],
    /api/admin/users.csv and /api/admin/usage.csv to admins (and 401/403 to everyone else)."""

    @dataclass
    class Settings:
        # Rows an export reads per query: what one worker holds in memory while streaming a CSV.
        export_page_rows: int = 500

    def __init__(self, settings: Plugin.Settings) -> None:
        if not 10 <= settings.export_page_rows <= 10_000:
            raise ConfigError("plugins.admin.settings.export_page_rows: must be from 10 to 10000")
        self.settings = settings
        self._gateway: Gateway | None = None

    @property
    def gateway(self) -> Gateway:
        assert self._gateway is not None, "the admin plugin has not started"
        return self._gateway

    @hookimpl
    async def resayil_startup(self, gateway: Gateway) -> None:
        """Keep the gateway: the routes ask it for services when they are called."""
        self._gateway = gateway

    @hookimpl
    def resayil_routes(self, gateway: Gateway) -> list[BaseRoute]:
        """/api/admin/overview, /api/admin/audit, /api/admin/users…, /api/admin/users.csv and /api/admin/usage.csv."""
        return routes.build(self)
