"""Forwarding to an OpenAI-compatible upstream over the one shared aiohttp session."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from edge.context import Upstream
from edge.errors import GatewayError, NotFound, UpstreamFailure

_RETYPE = {400: "invalid_request_error", 413: "invalid_request_error", 422: "invalid_request_error"}


def open_session(*, connect_timeout: float) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30, ttl_dns_cache=300)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None, connect=connect_timeout),
        auto_decompress=False,
        # The gateway relays the upstream's bytes as they are (auto_decompress=False), so it must not ask
        # for a compressed answer: a gzipped body would reach the client without its Content-Encoding.
        skip_auto_headers=("User-Agent", "Accept-Encoding"),
    )


def upstream_headers(upstream: Upstream, request_id: str) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "X-Request-Id": request_id}
    if upstream.settings.api_key:
        headers["Authorization"] = f"Bearer {upstream.settings.api_key}"
    return headers


def _upstream_message(body: bytes) -> str:
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:300].decode("utf-8", "replace").strip() or "no detail"
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        error = error.get("message")
    return str(error or "no detail")[:300]


def map_status(upstream: Upstream, status: int, body: bytes, retry_after: str | None) -> GatewayError:
    """Turn an upstream's error answer into the gateway's, typed by status (Ollama types them all api_error)."""
    message = _upstream_message(body)
    name = upstream.name
    if status in (401, 403):
        return UpstreamFailure(
            f"The upstream {name} refused the gateway's credentials.",
            upstream=name,
            code="upstream_auth_failed",
        )
    if status == 404:
        return NotFound(f"The model is not available on the upstream: {message}", code="model_not_found", param="model")
    if status in (429, 503):
        return UpstreamFailure(
            f"The upstream {name} is busy; try again shortly.",
            status=503,
            code="upstream_busy",
            upstream=name,
            retryable=status == 503,
            headers={"retry-after": retry_after if retry_after and retry_after.isdigit() else "1"},
        )
    if status in _RETYPE:
        return GatewayError(
            f"The upstream rejected the request: {message}",
            status=status,
            code="upstream_rejected",
            type=_RETYPE[status],
        )
    if 400 <= status < 500:
        return GatewayError(f"The upstream rejected the request: {message}", status=400, code="upstream_rejected")
    return UpstreamFailure(f"The upstream {name} failed: {message}", upstream=name, retryable=True)


def unreachable(upstream: Upstream) -> UpstreamFailure:
    return UpstreamFailure(
        f"The upstream {upstream.name} cannot be reached.",
        upstream=upstream.name,
        code="upstream_unreachable",
        retryable=True,
    )


def timed_out(upstream: Upstream) -> UpstreamFailure:
    return UpstreamFailure(
        f"The upstream {upstream.name} did not answer in time.",
        status=504,
        upstream=upstream.name,
        code="upstream_timeout",
    )


async def post(
    session: aiohttp.ClientSession, *, upstream: Upstream, path: str, body: bytes, request_id: str
) -> aiohttp.ClientResponse:
    """POST to the upstream and return a 2xx response still open, or raise the mapped failure."""
    try:
        resp = await session.post(
            upstream.settings.base_url.rstrip("/") + path,
            data=body,
            headers=upstream_headers(upstream, request_id),
        )
    except (aiohttp.ClientConnectionError, OSError):
        raise unreachable(upstream) from None
    if resp.status >= 300:
        try:
            detail = await resp.content.read(64 * 1024)
        except (aiohttp.ClientError, OSError):
            detail = b""
        finally:
            resp.release()
        raise map_status(upstream, resp.status, detail, resp.headers.get("retry-after"))
    return resp
