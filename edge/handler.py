"""The /v1 request path: parse, authenticate, authorize, reserve, route, forward, settle.

Pure ASGI for speed. Settle runs exactly once whenever reserve ran, shielded from cancellation, and a
watcher on `receive` cancels the upstream work as soon as the client goes away.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from edge import proxy
from edge.asgi import (
    ClientGone,
    Receive,
    Scope,
    Send,
    header_list,
    read_body,
    send_bytes,
    send_error,
    send_json,
)
from edge.context import RequestContext, Usage
from edge.errors import (
    GatewayError,
    MethodNotAllowed,
    NotFound,
    Unauthorized,
    UpstreamFailure,
    model_not_found,
)
from edge.gateway import Gateway
from edge.request import parse_chat, parse_embeddings, prompt_bytes
from edge.sse import StreamRelay, event

log = logging.getLogger("resayil.access")
_SANE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]

Handler = Callable[[RequestContext], Awaitable[tuple[int, Any]]]


@dataclass(frozen=True, slots=True)
class Endpoint:
    name: str
    methods: frozenset[str]
    handler: Handler | None = None
    parse: Callable[[RequestContext], None] | None = None
    upstream_path: str | None = None


def new_request_id() -> str:
    return "req_" + os.urandom(12).hex()


class V1:
    """The ASGI app behind every `/v1` path."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.chain = gateway.chain
        self.limit = gateway.config.server.max_body_bytes
        self.timeouts = gateway.config.timeouts
        self.endpoints: dict[str, dict[str, Endpoint]] = {}
        self._add(
            "/v1/chat/completions",
            Endpoint("chat", frozenset({"POST"}), parse=parse_chat, upstream_path="/chat/completions"),
        )
        self._add(
            "/v1/embeddings",
            Endpoint("embeddings", frozenset({"POST"}), parse=parse_embeddings, upstream_path="/embeddings"),
        )
        self._add("/v1/models", Endpoint("models", frozenset({"GET"}), handler=self.list_models))
        for contributed in self.chain.call("resayil_v1_endpoints", gateway=gateway):
            for (method, path), handler in contributed.items():
                self._add(path, Endpoint(path, frozenset({method.upper()}), handler=handler))

    def _add(self, path: str, endpoint: Endpoint) -> None:
        if not path.startswith("/v1/"):
            raise ValueError(f"a /v1 endpoint must start with /v1/: {path}")
        for method in endpoint.methods:
            self.endpoints.setdefault(path, {})[method] = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        given = headers.get("x-request-id")
        request_id = given if given and _SANE_ID.match(given) else new_request_id()
        method = scope["method"]
        path = scope["path"]
        client = scope.get("client")
        ctx = RequestContext(
            request_id=request_id,
            method=method,
            path=path,
            endpoint="",
            headers=headers,
            client_ip=client[0] if client else "",
            started=time.perf_counter(),
        )
        try:
            routes = self.endpoints.get(path.rstrip("/") if len(path) > 4 else path)
            if routes is None:
                raise NotFound(f"Invalid URL ({method} {path})", code="unknown_url")
            endpoint = routes.get(method)
            if endpoint is None:
                raise MethodNotAllowed(
                    f"Method {method} is not allowed on {path}.", headers={"allow": ", ".join(sorted(routes))}
                )
            ctx.endpoint = endpoint.name
            if method in ("POST", "PUT", "PATCH"):
                ctx.body = await read_body(receive, limit=self.limit, content_length=headers.get("content-length"))
            principal = await self.chain.first("resayil_authenticate", ctx=ctx)
            if principal is None:
                raise Unauthorized("You did not provide a valid API key. Send it as `Authorization: Bearer rsk_...`.")
            ctx.principal = principal
            if endpoint.parse is not None:
                endpoint.parse(ctx)
                model = self.gateway.models.get(ctx.model_name or "")
                if model is None or model.kind != endpoint.name.replace("embeddings", "embedding"):
                    raise model_not_found(ctx.model_name or "")
                ctx.model = model
            await self.chain.each("resayil_authorize", ctx=ctx)
            if endpoint.handler is not None:
                status, data = await endpoint.handler(ctx)
                ctx.status = status
                await send_json(send, status, data, self._headers(ctx))
            else:
                await self._billed(ctx, endpoint, receive, send)
        except ClientGone:
            ctx.outcome = "client_gone"
        except GatewayError as exc:
            ctx.error_code = exc.code
            if ctx.outcome == "pending":
                ctx.outcome = "refused"
            if not ctx.status:
                ctx.status = exc.status
                await send_error(send, exc, self._headers(ctx))
        except Exception:
            log.exception("unexpected error", extra={"fields": {"request_id": ctx.request_id}})
            ctx.outcome, ctx.error_code = "error", "server_error"
            if not ctx.status:
                ctx.status = 500
                error = GatewayError("The gateway failed to handle this request; it has been logged.")
                await send_error(send, error, self._headers(ctx))
        finally:
            self._log(ctx)

    def _headers(self, ctx: RequestContext) -> list[tuple[bytes, bytes]]:
        out = [(b"x-request-id", ctx.request_id.encode())]
        if ctx.response_headers:
            out.extend(header_list(ctx.response_headers))
        return out

    async def list_models(self, ctx: RequestContext) -> tuple[int, Any]:
        models = [m for m in self.gateway.models.values() if m.name not in self.gateway.hidden_models]
        for fn, args, _ in self.chain._impls["resayil_models"]:
            kept = await fn(**{a: {"ctx": ctx, "models": models}[a] for a in args})
            if kept is not None:
                models = [m for m in kept if m.name not in self.gateway.hidden_models]
        return 200, {
            "object": "list",
            "data": [
                {"id": m.name, "object": "model", "created": 1735689600, "owned_by": m.settings.owned_by}
                for m in models
            ],
        }

    async def _billed(self, ctx: RequestContext, endpoint: Endpoint, receive: Receive, send: Send) -> None:
        """Reserve, route and forward; settle exactly once however it ends."""
        task = asyncio.current_task()
        assert task is not None
        watcher = asyncio.ensure_future(_watch_disconnect(receive, task, ctx))
        try:
            await self.chain.each("resayil_reserve", ctx=ctx)
            await self.chain.each("resayil_route", ctx=ctx)
            guarded = client_send(send)
            while True:
                if ctx.upstream is None:
                    raise NotFound("No upstream serves this model.", code="model_not_found", param="model")
                try:
                    await self._forward(ctx, endpoint, guarded)
                    break
                except UpstreamFailure as exc:
                    if ctx.first_byte_at is not None or not exc.retryable:
                        raise
                    if not await self.chain.first("resayil_retry", ctx=ctx, error=exc):
                        raise
                    ctx.outcome = "pending"
        except asyncio.CancelledError:
            if ctx.outcome != "client_gone":
                raise
            task.uncancel()
        except ClientGone:
            ctx.outcome = "client_gone"
        except GatewayError:
            if ctx.outcome == "pending":
                ctx.outcome = "refused"
            raise
        finally:
            watcher.cancel()
            ctx.finished_at = time.perf_counter()
            await self._settle(ctx)

    async def _settle(self, ctx: RequestContext) -> None:
        settle = asyncio.ensure_future(self.chain.all("resayil_settle", ctx=ctx))
        while True:
            try:
                await asyncio.shield(settle)
                return
            except asyncio.CancelledError:
                if settle.done():
                    raise
                # Cancelled while settling: let settlement finish, then let the cancellation go on.
                await asyncio.wait([settle])
                raise

    def _body(self, ctx: RequestContext) -> tuple[bytes, bool]:
        """The bytes to send upstream, and whether the client asked for the usage chunk."""
        payload = ctx.payload
        keep_usage = True
        if ctx.upstream_model and ctx.upstream_model != ctx.model_name:
            ctx.set_payload("model", ctx.upstream_model)
        if ctx.stream:
            options = payload.get("stream_options") or {}
            keep_usage = bool(options.get("include_usage"))
            if not keep_usage:
                ctx.set_payload("stream_options", {**options, "include_usage": True})
        return (orjson.dumps(payload) if ctx.body_changed else ctx.body), keep_usage

    async def _forward(self, ctx: RequestContext, endpoint: Endpoint, send: Send) -> None:
        upstream = ctx.upstream
        assert upstream is not None and endpoint.upstream_path is not None
        body, keep_usage = self._body(ctx)
        loop = asyncio.get_running_loop()
        t = self.timeouts
        total_deadline = loop.time() + t.total
        resp: aiohttp.ClientResponse | None = None
        try:
            async with asyncio.timeout_at(min(total_deadline, loop.time() + t.first_byte)) as deadline:
                resp = await proxy.post(
                    self.gateway.session,
                    upstream=upstream,
                    path=endpoint.upstream_path,
                    body=body,
                    request_id=ctx.request_id,
                )
                if ctx.stream and resp.content_type == "text/event-stream":
                    await self._relay_stream(ctx, resp, send, keep_usage, deadline, total_deadline, loop)
                else:
                    await self._relay_whole(ctx, resp, send)
        except TimeoutError:
            if ctx.first_byte_at is None:
                ctx.outcome = "upstream_timeout"
                raise proxy.timed_out(upstream) from None
            await self._end_stream_with_error(
                ctx, send, "upstream_timeout", "The upstream stopped sending within the time limit."
            )
        except (aiohttp.ClientError, OSError):
            if ctx.first_byte_at is None:
                ctx.outcome = "upstream_error"
                raise proxy.unreachable(upstream) from None
            await self._end_stream_with_error(ctx, send, "upstream_error", "The upstream connection was lost.")
        except GatewayError:
            ctx.outcome = "upstream_error"
            raise
        finally:
            if resp is not None:
                resp.release()

    async def _relay_whole(self, ctx: RequestContext, resp: aiohttp.ClientResponse, send: Send) -> None:
        data = await resp.read()
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError:
            parsed = None
        usage = parsed.get("usage") if isinstance(parsed, dict) else None
        if isinstance(usage, dict):
            ctx.usage = Usage(
                int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0), "upstream"
            )
        elif parsed is not None:
            ctx.usage = estimate(ctx, _completion_text_chunks(parsed))
        ctx.first_byte_at = time.perf_counter()
        ctx.status = 200
        await send_bytes(send, 200, data, self._headers(ctx))
        ctx.delivered_chunks = 1
        ctx.outcome = "ok"

    async def _relay_stream(
        self,
        ctx: RequestContext,
        resp: aiohttp.ClientResponse,
        send: Send,
        keep_usage: bool,
        deadline: asyncio.Timeout,
        total_deadline: float,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        relay = StreamRelay(keep_usage=keep_usage)
        idle = self.timeouts.idle
        started = False
        try:
            async for data in resp.content.iter_any():
                deadline.reschedule(min(total_deadline, loop.time() + idle))
                out, counted = relay.feed(data)
                if out:
                    if not started:
                        ctx.status = 200
                        await send(
                            {
                                "type": "http.response.start",
                                "status": 200,
                                "headers": [*_SSE_HEADERS, *self._headers(ctx)],
                            }
                        )
                        started = True
                        ctx.first_byte_at = time.perf_counter()
                    await send({"type": "http.response.body", "body": out, "more_body": True})
                    ctx.delivered_chunks += counted
                if relay.error is not None or relay.done:
                    break
        finally:
            ctx.usage = relay.usage or estimate(ctx, ctx.delivered_chunks)
        if relay.error is not None:
            ctx.outcome = "upstream_error"
            if not started:
                raise GatewayError(relay.error["message"], status=502, code="upstream_error")
            await send({"type": "http.response.body", "body": event({"error": relay.error}), "more_body": False})
            return
        if not relay.done:
            raise aiohttp.ClientPayloadError("stream ended without [DONE]")
        ctx.outcome = "ok"
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _end_stream_with_error(self, ctx: RequestContext, send: Send, code: str, message: str) -> None:
        ctx.outcome = code
        error = {"message": message, "type": "server_error", "param": None, "code": code}
        await send({"type": "http.response.body", "body": event({"error": error}), "more_body": False})

    def _log(self, ctx: RequestContext) -> None:
        if not log.isEnabledFor(logging.INFO):
            return
        principal = ctx.principal
        log.info(
            "request",
            extra={
                "fields": {
                    "request_id": ctx.request_id,
                    "method": ctx.method,
                    "path": ctx.path,
                    "account": principal.account_id if principal else None,
                    "key": principal.key_id if principal else None,
                    "model": ctx.model_name,
                    "upstream": ctx.upstream.name if ctx.upstream else None,
                    "route": ctx.route if ctx.upstream else None,
                    "status": ctx.status,
                    "outcome": ctx.outcome,
                    "error": ctx.error_code,
                    "prompt_tokens": ctx.usage.prompt_tokens,
                    "completion_tokens": ctx.usage.completion_tokens,
                    "usage_source": ctx.usage.source,
                    "stream": ctx.stream,
                    "latency_ms": round((time.perf_counter() - ctx.started) * 1000, 2),
                    "ttfb_ms": round((ctx.first_byte_at - ctx.started) * 1000, 2) if ctx.first_byte_at else None,
                }
            },
        )


def estimate(ctx: RequestContext, completion_chunks: int) -> Usage:
    """Usage for an answer the upstream did not count: the README's rule for cut streams.

    Prompt: ceil(UTF-8 bytes of the prompt text / 4) + 4 per message. Completion: one token per content
    chunk relayed to the client. Nothing relayed means nothing charged.
    """
    if completion_chunks <= 0:
        return Usage()
    messages = ctx.payload.get("messages")
    count = len(messages) if isinstance(messages, list) else 0
    return Usage(-(-prompt_bytes(ctx.payload) // 4) + 4 * count, completion_chunks, "estimated")


def _completion_text_chunks(parsed: dict[str, Any]) -> int:
    choices = parsed.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        message = choices[0].get("message") or {}
        text = message.get("content") if isinstance(message, dict) else None
        return -(-len(str(text or "").encode()) // 4)
    return 0


async def _watch_disconnect(receive: Receive, task: asyncio.Task[Any], ctx: RequestContext) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            if ctx.outcome == "pending":
                ctx.outcome = "client_gone"
                task.cancel()
            return


def client_send(send: Send) -> Send:
    """`send` that reports a vanished client as ClientGone, whatever the server raises."""

    async def guarded(message: Any) -> None:
        try:
            await send(message)
        except Exception:
            raise ClientGone from None

    return guarded
