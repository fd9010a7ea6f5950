"""The operator's view: `/api/admin/cloud-budget` and `/api/admin/upstreams`, for admins only."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from edge.services import GUARDS

if TYPE_CHECKING:
    from edge.gateway import Gateway

Reader = Callable[[], Awaitable[Any]]


def admin_routes(gateway: Gateway, *, cloud_budget: Reader, upstreams: Reader) -> list[BaseRoute]:
    """Guarded by the `GUARDS` service: without a plugin that logs users in, the core's answers 401."""

    def view(read: Reader) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            await gateway.service(GUARDS).require_admin(request)
            return JSONResponse(await read())

        return endpoint

    return [
        Route("/api/admin/cloud-budget", view(cloud_budget), methods=["GET"]),
        Route("/api/admin/upstreams", view(upstreams), methods=["GET"]),
    ]
