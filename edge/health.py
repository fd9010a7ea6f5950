"""/healthz (the process is alive) and /readyz (every part it needs answers)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from edge.gateway import Gateway


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    parts: dict[str, Any] = {}
    for result in await gateway.chain.collect("resayil_readiness", gateway=gateway):
        parts.update(result)
    # Every core part must answer; of the upstreams one is enough, since the others can take the traffic.
    upstreams = [
        part.get("ok", False)
        for name, part in parts.items()
        if name.startswith("upstream:") and part.get("state") != "not_configured"
    ]
    core = [part.get("ok", False) for name, part in parts.items() if not name.startswith("upstream:")]
    ready = all(core) and (any(upstreams) or not upstreams)
    return JSONResponse(
        {"status": "ready" if ready else "not_ready", "parts": parts}, status_code=200 if ready else 503
    )
