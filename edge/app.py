"""The app factory: one Gateway, its /v1 handler, and a Starlette app for health, plugin APIs and the portal."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from edge.asgi import Receive, Scope, Send
from edge.clock import SYSTEM, Clock
from edge.config import GatewayConfig
from edge.errors import GatewayError
from edge.forwarded import parse_networks, real_client
from edge.gateway import Gateway
from edge.handler import V1, new_request_id
from edge.health import healthz, readyz
from edge.security import SecurityHeaders, client_request_id
from edge.transient import DATABASE_ERRORS, database_unavailable, outage_cause

log = logging.getLogger("resayil.app")
PORTAL_DIR = Path(__file__).resolve().parent.parent / "portal_static"
_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large", 400: "invalid_request"}
# No portal or /api path comes near this; past it, routing itself can fail (a 4,301-digit `{id:int}` is a
# ValueError in int()), so a longer path is refused before it reaches a route.
MAX_PATH = 2048
# Where plugin routes may live: the portal's API, and endpoints for tools on the gateway's own host
# (fail2ban's action), which the route itself must restrict to loopback.
PLUGIN_PREFIXES = ("/api/", "/internal/")


def api_error(error: GatewayError) -> Response:
    """THE answer to every failed call outside /v1 (the portal's API, its pages, health): the error's one
    JSON body (`GatewayError.body`), its status and headers. Never HTML, never a traceback."""
    return Response(
        error.body_bytes(),
        status_code=error.status,
        media_type="application/json",
        headers={k.decode("latin-1"): v.decode("latin-1") for k, v in error.response_headers()},
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"Invalid URL ({request.method} {request.url.path})"
    elif exc.status_code == 405:
        message = f"Method {request.method} is not allowed on {request.url.path}."
    else:
        message = str(exc.detail)
    status = exc.status_code
    code = _CODES.get(status, "invalid_request" if status < 500 else "server_error")
    return api_error(GatewayError(message, status=status, code=code, headers=dict(exc.headers or {})))


async def _gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return api_error(exc)


async def _database_error(request: Request, exc: Exception) -> Response:
    """A database that refuses or drops connections is an outage: 503 `database_unavailable`. Any other
    database error goes on to `_server_error`."""
    if (cause := outage_cause(exc)) is None:
        raise exc
    log.warning("database unavailable on %s: %s", request.url.path, cause)
    return api_error(database_unavailable())


async def _server_error(request: Request, exc: Exception) -> Response:
    if (cause := outage_cause(exc)) is not None:  # wrapped in another error (Starlette logs it again)
        log.warning("database unavailable on %s: %s", request.url.path, cause)
        return api_error(database_unavailable())
    log.error("unexpected error on %s", request.url.path, exc_info=exc)
    return api_error(GatewayError("The server failed to handle this request; it has been logged."))


class RequestId:
    """Pure ASGI: every non-/v1 response carries `x-request-id` too: the client's when it is sane (the same
    rule as /v1), else a new one, so a hostile value never reaches a log line or a response header."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                given = value.decode("latin-1")
        request_id = client_request_id(given) or new_request_id()
        tag = (b"x-request-id", request_id.encode("latin-1"))

        async def tagged(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), tag]
            await send(message)

        await self.app(scope, receive, tagged)


class PathLimit:
    """Pure ASGI: 414 `uri_too_long` for a path longer than `MAX_PATH` characters."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and len(scope["path"]) > MAX_PATH:
            error = GatewayError(f"The path is longer than {MAX_PATH} characters.", status=414, code="uri_too_long")
            await api_error(error)(scope, receive, send)
            return
        await self.app(scope, receive, send)


class EdgeApp:
    """The ASGI entry point: `/v1` goes to the hot path, everything else to Starlette."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.v1 = V1(gateway)
        self.web = build_web(gateway)
        self.proxies = parse_networks(gateway.config.server.trusted_proxies)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.proxies and scope["type"] == "http":
            real_client(scope, self.proxies)
        if scope["type"] == "http" and (scope["path"] == "/v1" or scope["path"].startswith("/v1/")):
            await self.v1(scope, receive, send)
        else:
            await self.web(scope, receive, send)


def build_web(gateway: Gateway) -> Any:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    routes: list[BaseRoute] = [Route("/healthz", healthz), Route("/readyz", readyz)]
    for contributed in gateway.chain.call("resayil_routes", gateway=gateway):
        for route in contributed:
            path = getattr(route, "path", "")
            if not path.startswith(PLUGIN_PREFIXES):
                raise ValueError(
                    f"plugin routes must live under /api/ (or /internal/ for the host's own tools): {path}"
                )
            routes.append(route)
    if PORTAL_DIR.is_dir():
        routes.append(Mount("/", StaticFiles(directory=PORTAL_DIR, html=True), name="portal"))
    web = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            HTTPException: _http_error,
            GatewayError: _gateway_error,
            **dict.fromkeys(DATABASE_ERRORS, _database_error),
            Exception: _server_error,
        },
    )
    web.state.gateway = gateway
    return RequestId(SecurityHeaders(PathLimit(web), public_url=gateway.config.server.public_url))


def create_app(config: GatewayConfig, *, plugins: Iterable[object] = (), clock: Clock = SYSTEM) -> EdgeApp:
    """Build a fresh app (and plugin manager) from a checked config; tests build one per test (and may
    give it a clock they move)."""
    return EdgeApp(Gateway(config, plugins=plugins, clock=clock))


def app_from_env() -> EdgeApp:
    """granian's target: the config named by RESAYIL_CONFIG (or the example), logging set up."""
    from edge import config as config_module
    from edge import logs

    config = config_module.load(os.environ.get("RESAYIL_CONFIG"))
    logs.setup(config.server.log_level)
    return create_app(config)
