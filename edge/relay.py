"""Forwarding one request to its upstream and relaying the answer: whole, or as a stream event by event.

A client never gets a success that was not one: an answer that is not the JSON object its endpoint
promises is a 502 `upstream_error`, and a stream always ends with `[DONE]` or an error event. What went
wrong upstream goes to the log under the request id, never to the client.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import aiohttp
import orjson

from edge import proxy
from edge import usage as usage_rules
from edge.asgi import ClientGone, Send, send_bytes
from edge.context import RequestContext
from edge.errors import GatewayError, GatewayTimeout
from edge.gateway import Gateway
from edge.request import upstream_body
from edge.sse import StreamRelay, error_event, malformed

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
# What a whole answer must hold, by endpoint: a list under this key.
_ANSWER_LIST = {"chat": "choices", "embeddings": "data"}
Headers = Callable[[RequestContext], list[tuple[bytes, bytes]]]
log = logging.getLogger("resayil.upstream")


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
        total_deadline = loop.time() + t.total_seconds
        resp: aiohttp.ClientResponse | None = None
        try:
            # A whole answer's first byte comes only when its generation is over: it may take up to `total_seconds`.
            first_byte = t.first_byte_seconds if ctx.stream else t.total_seconds
            async with asyncio.timeout_at(min(total_deadline, loop.time() + first_byte)) as deadline:
                ctx.sent_upstream = True
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
                if not ctx.stream:
                    usage_rules.charge_the_bound(ctx, "a whole answer did not come within the time limit")
                raise proxy.timed_out(upstream) from None
            stopped = GatewayTimeout("The model server stopped sending within the time limit.", code="upstream_timeout")
            await self._end_stream_with_error(ctx, send, stopped)
        except (aiohttp.ClientError, OSError):
            if ctx.first_byte_at is None:
                ctx.outcome = "upstream_error"
                raise proxy.unreachable(upstream) from None
            lost = "The connection to the model server was lost during the answer; please try again."
            await self._end_stream_with_error(ctx, send, malformed(lost))
        except GatewayError:
            ctx.outcome = "upstream_error"
            raise
        except ClientGone:
            raise
        except Exception:
            if ctx.first_byte_at is None:
                raise
            # Whatever broke, a stream the client is reading still ends with an error event.
            log.exception("relay failed during a stream", extra={"fields": {"request_id": ctx.request_id}})
            await self._end_stream_with_error(ctx, send, malformed())
        finally:
            if resp is not None:
                resp.release()

    async def _relay_whole(self, ctx: RequestContext, resp: aiohttp.ClientResponse, send: Send) -> None:
        data = await resp.read()
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError:
            parsed = None
        listed = _ANSWER_LIST.get(ctx.endpoint, "choices")
        if not isinstance(parsed, dict) or not isinstance(parsed.get(listed), list):
            log.warning(
                "upstream answered 200 with something that is not an answer",
                extra={
                    "fields": {
                        "request_id": ctx.request_id,
                        "upstream": ctx.upstream.name if ctx.upstream else None,
                        "content_type": resp.content_type,
                        "detail": data[:300].decode("utf-8", "replace"),
                    }
                },
            )
            raise malformed()
        usage = usage_rules.from_upstream(parsed.get("usage"))
        ctx.usage = usage or usage_rules.estimate(ctx, usage_rules.completion_chunks_of(parsed))
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
        relay = StreamRelay(keep_usage=keep_usage, request_id=ctx.request_id)
        idle = self.timeouts.idle_seconds
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
            ctx.usage = relay.usage or usage_rules.estimate(ctx, ctx.delivered_chunks)
        if relay.error is not None or not relay.done:
            error = relay.error or malformed()
            if relay.error is None:
                log.warning("upstream stream ended without [DONE]", extra={"fields": {"request_id": ctx.request_id}})
            if not started:
                raise error
            await self._end_stream_with_error(ctx, send, error)
            return
        ctx.outcome = "ok"
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        await _drain(resp)

    async def _end_stream_with_error(self, ctx: RequestContext, send: Send, error: GatewayError) -> None:
        ctx.outcome = error.code or "upstream_error"
        ctx.error_code = error.code
        await send({"type": "http.response.body", "body": error_event(error), "more_body": False})


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
