"""Built-in behaviour as ordinary plugins, all `trylast` and registered after every other plugin, so each
runs after every other implementation of its hook and any plugin can override it (checked at startup:
`edge.chain.check_order`)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import aiohttp

from edge.config import GatewayConfig
from edge.context import Principal, RequestContext
from edge.hookspecs import hookimpl
from edge.outbox import CoreEvents
from edge.proxy import upstream_headers

if TYPE_CHECKING:
    from edge.gateway import Gateway

log = logging.getLogger("resayil.defaults")


class DefaultRoute:
    """Send the request to its model's own upstream when no routing plugin chose one."""

    @hookimpl(trylast=True)
    async def resayil_route(self, ctx: RequestContext) -> None:
        if ctx.upstream is None and ctx.model is not None:
            ctx.upstream = ctx.model.upstream
            ctx.upstream_model = ctx.model.upstream_model
            ctx.route = ctx.model.upstream.kind
            ctx.multiplier = ctx.model.multiplier


class OpenAccess:
    """Config `server.open_access: true`: every caller is an anonymous principal. For experiments only."""

    @hookimpl(trylast=True)
    async def resayil_authenticate(self, ctx: RequestContext) -> Principal:
        return Principal(account_id=None, tier="open")


class CoreReadiness:
    """/readyz parts for the database, Redis and each upstream."""

    @hookimpl(trylast=True)
    async def resayil_readiness(self, gateway: Gateway) -> dict[str, dict[str, Any]]:
        checks = {"database": self._database(gateway)}
        if gateway.redis is not None:
            checks["redis"] = self._redis(gateway)
        for name in gateway.upstreams:
            checks[f"upstream:{name}"] = self._upstream(gateway, name)
        results = await asyncio.gather(*checks.values())
        return dict(zip(checks, results, strict=True))

    async def _database(self, gateway: Gateway) -> dict[str, Any]:
        try:
            async with asyncio.timeout(2):
                await gateway.database.ping()
        except Exception as exc:
            return {"ok": False, "error": type(exc).__name__}
        return {"ok": True, "dialect": gateway.database.dialect}

    async def _redis(self, gateway: Gateway) -> dict[str, Any]:
        assert gateway.redis is not None
        try:
            async with asyncio.timeout(2):
                await gateway.redis.ping()
        except Exception as exc:
            return {"ok": False, "error": type(exc).__name__}
        return {"ok": True}

    async def _upstream(self, gateway: Gateway, name: str) -> dict[str, Any]:
        upstream = gateway.upstreams[name]
        if upstream.kind == "cloud" and not upstream.settings.api_key:
            # A cloud upstream without a key is simply not in use; it does not make the gateway unready.
            return {"ok": True, "state": "not_configured", "kind": upstream.kind}
        url = upstream.settings.base_url.rstrip("/") + "/models"
        try:
            async with gateway.session.get(
                url, headers=upstream_headers(upstream, "readyz"), timeout=aiohttp.ClientTimeout(total=2)
            ) as resp:
                ok = resp.status < 500
                return {
                    "ok": ok,
                    "state": "up" if ok else "error",
                    "status": resp.status,
                    "kind": upstream.kind,
                }
        except (aiohttp.ClientError, OSError, TimeoutError):
            return {"ok": False, "state": "unreachable", "kind": upstream.kind}


def default_plugins(config: GatewayConfig) -> list[object]:
    plugins: list[object] = [DefaultRoute(), CoreReadiness(), CoreEvents()]
    if config.server.open_access:
        log.warning("server.open_access is on: /v1 serves anyone without a key; never use this in production")
        plugins.append(OpenAccess())
    return plugins
