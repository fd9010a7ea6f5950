"""Forwarding one request to its upstream and relaying the answer: whole, or as a stream event by event."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson

from edge import proxy
from edge.asgi import Send, send_bytes
from edge.context import RequestContext, Usage
from edge.errors import GatewayError
from edge.gateway import Gateway
from edge.request import prompt_bytes, upstream_body
from edge.sse import StreamRelay, event

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
Headers = Callable[[RequestContext], list[tuple[bytes, bytes]]]


class Forwarder:
    """Sends `ctx` to `ctx.upstream` under the configured timeouts and relays the answer to `send`."""

    def __init__(self, gateway: Gateway, *, headers: Headers) -> None:
        self.gateway = gateway
        self.timeouts = gateway.config.timeouts
        self._headers = headers

    async def forward(self, ctx: RequestContext, upstream_path: str, send: Send) -> None:
        upstream = ctx.upstream
        assert upstream is not None
        body, keep_usage = upstream_body(ctx)
        loop = asyncio.get_running_loop()
        t = self.timeouts
        total_deadline = loop.time() + t.total
        resp: aiohttp.ClientResponse | None = None
        try:
            async with asyncio.timeout_at(min(total_deadline, loop.time() + t.first_byte)) as deadline:
                try:
                    resp = await proxy.post(
                        self.gateway.session,
                        upstream=upstream,
                        path=upstream_path,
                        body=body,
                        request_id=ctx.request_id,
                    )
                finally:
                    ctx.mark("upstream")  # the upstream's time to its headers, or to failing
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
                                "headers": [*SSE_HEADERS, *self._headers(ctx)],
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
        await _drain(resp)

    async def _end_stream_with_error(self, ctx: RequestContext, send: Send, code: str, message: str) -> None:
        ctx.outcome = code
        error = {"message": message, "type": "server_error", "param": None, "code": code}
        await send({"type": "http.response.body", "body": event({"error": error}), "more_body": False})


# After `[DONE]` only the end of the upstream's body is due (the last empty chunk of a chunked answer). It is
# read, once the client has its whole answer, so the kept-alive connection goes back to the pool: released
# unread, aiohttp closes it and the next stream pays for a new connection. An upstream that sends more, or
# nothing at all, loses its connection as before.
_DRAIN_BYTES = 64 * 1024
_DRAIN_SECONDS = 0.5


async def _drain(resp: aiohttp.ClientResponse) -> None:
    try:
        async with asyncio.timeout(_DRAIN_SECONDS):
            left = _DRAIN_BYTES
            while left > 0 and (data := await resp.content.readany()):
                left -= len(data)
    except (TimeoutError, aiohttp.ClientError, OSError):
        pass


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
