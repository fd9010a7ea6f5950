"""Forwarding to an OpenAI-compatible upstream over the one shared aiohttp session."""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
import orjson

from edge.context import Upstream
from edge.errors import GatewayError, NotFound, UpstreamFailure

log = logging.getLogger("resayil.upstream")
# What aiohttp raises when no connection could be opened (ConnectionTimeoutError: the connect timeout only).
NOT_CONNECTED = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError, ConnectionRefusedError)
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
    """The upstream's own words, for the log only: they may name paths, hosts and model files."""
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:300].decode("utf-8", "replace").strip() or "no detail"
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        error = error.get("message")
    return str(error or "no detail")[:300]


def map_status(upstream: Upstream, status: int, retry_after: str | None) -> GatewayError:
    """Turn an upstream's error answer into the gateway's, typed by status (Ollama types them all api_error).

    What the client reads says what kind of failure it was and never repeats the upstream's text or name.
    """
    name = upstream.name
    if status in (401, 403):
        return UpstreamFailure(
            "The model server refused the gateway's credentials; the operator has been told.",
            upstream=name,
            code="upstream_auth_failed",
        )
    if status == 404:
        return NotFound(
            "The model is not available on the model server right now.", code="model_not_found", param="model"
        )
    if status in (429, 503):
        return UpstreamFailure(
            "The model server is busy; try again shortly.",
            status=503,
            code="upstream_busy",
            upstream=name,
            retryable=status == 503,
            headers={"retry-after": retry_after if retry_after and retry_after.isdigit() else "1"},
        )
    if 400 <= status < 500:
        return GatewayError(
            f"The model server rejected the request (status {status}); check its parameters and content.",
            status=status if status in _RETYPE else 400,
            code="upstream_rejected",
            type=_RETYPE.get(status, "invalid_request_error"),
        )
    return UpstreamFailure("The model server failed to answer this request.", upstream=name, retryable=True)


def unreachable(upstream: Upstream, *, reached: bool = True) -> UpstreamFailure:
    """A connection that failed: never opened (`reached` False), or lost before the answer began."""
    return UpstreamFailure(
        "The model server cannot be reached right now; try again shortly."
        if not reached
        else "The model server closed the connection before answering.",
        upstream=upstream.name,
        code="upstream_unreachable",
        retryable=True,
        reached=reached,
    )


def timed_out(upstream: Upstream) -> UpstreamFailure:
    return UpstreamFailure(
        "The model server did not answer in time.",
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
    except (aiohttp.ClientConnectionError, OSError) as exc:
        raise unreachable(upstream, reached=not isinstance(exc, NOT_CONNECTED)) from None
    if resp.status >= 300:
        try:
            detail = await resp.content.read(64 * 1024)
        except (aiohttp.ClientError, OSError):
            detail = b""
        finally:
            resp.release()
        log.warning(
            "upstream answered an error",
            extra={
                "fields": {
                    "request_id": request_id,
                    "upstream": upstream.name,
                    "status": resp.status,
                    "detail": _upstream_message(detail),
                }
            },
        )
        raise map_status(upstream, resp.status, resp.headers.get("retry-after"))
    return resp
