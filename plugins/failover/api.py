"""The operator's view: `/api/admin/cloud-budget` and `/api/admin/upstreams`, for admins only."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from edge.errors import Forbidden
from plugins.auth_keys.guards import PLUGIN_NAME as AUTH_PLUGIN
from plugins.auth_keys.guards import require_admin as guard

Reader = Callable[[], Awaitable[Any]]


async def require_admin(request: Request) -> None:
    """The auth plugin's guard; without that plugin enabled nobody is an admin, so the view stays closed."""
    if request.app.state.gateway.plugin(AUTH_PLUGIN) is None:
        raise Forbidden("This needs an administrator.", code="admin_required")
    await guard(request)


def admin_routes(*, cloud_budget: Reader, upstreams: Reader) -> list[BaseRoute]:
    def view(read: Reader) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            await require_admin(request)
            return JSONResponse(await read())

        return endpoint

    return [
        Route("/api/admin/cloud-budget", view(cloud_budget), methods=["GET"]),
        Route("/api/admin/upstreams", view(upstreams), methods=["GET"]),
    ]
