"""The /v1 request path: parse, authenticate, authorize, admit, reserve, route, forward, settle.

Pure ASGI for speed. Settle runs exactly once whenever admit let a billed request through (so a Redis
claim run in admit is always given back), shielded from cancellation, and a watcher on `receive` cancels
the upstream work as soon as the client goes away.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from pluggy import HookCaller

from edge import usage as usage_rules
from edge.asgi import (
    ClientGone,
    Receive,
    Scope,
    Send,
    header_list,
    read_body,
    send_error,
    send_json,
)
from edge.context import RequestContext
from edge.errors import (
    GatewayError,
    MethodNotAllowed,
    NotFound,
    Unauthorized,
    UpstreamFailure,
    model_not_found,
)
from edge.gateway import Gateway
from edge.relay import Forwarder
from edge.request import parse_chat, parse_embeddings
from edge.security import NOSNIFF, client_request_id
from edge.transient import database_outage, database_unavailable, outage_cause

log = logging.getLogger("resayil.access")
# The status recorded for a request whose client went away before any answer (nginx's convention).
CLIENT_CLOSED = 499

Handler = Callable[[RequestContext], Awaitable[tuple[int, Any]]]


@dataclass(frozen=True, slots=True)
class Endpoint:
    name: str
    methods: frozenset[str]
    handler: Handler | None = None
    parse: Callable[[RequestContext], None] | None = None
    upstream_path: str | None = None


# Request ids correlate log lines: they must be unique, not unguessable, so no getrandom() call per request.
_ids = random.Random(os.urandom(16))


def new_request_id() -> str:
    return f"req_{_ids.getrandbits(96):024x}"


def phase_durations(ctx: RequestContext) -> Iterator[tuple[str, float]]:
    """Each marked phase of the request and its milliseconds, from the request's start."""
    last = ctx.started
    for phase, at in ctx.marks:
        yield phase, (at - last) * 1000
        last = at


def server_timing(ctx: RequestContext) -> str:
    """The `server-timing` header, e.g. `read;dur=0.21, auth;dur=0.05, authorize;dur=0.45, reserve;dur=0.07,
    route;dur=0.29, upstream;dur=0.83`: `authorize` includes the admit phase (the rate limit), `route`
    includes any wait in the local queue, `upstream` is the upstream's time to its response headers."""
    return ", ".join([f"{phase};dur={ms:.2f}" for phase, ms in phase_durations(ctx)])


def timing_fields(ctx: RequestContext) -> dict[str, float]:
    """The same phases for the request log; a phase that ran twice (a retried upstream) is added up."""
    fields: dict[str, float] = {}
    for phase, ms in phase_durations(ctx):
        fields[phase] = round(fields.get(phase, 0.0) + ms, 2)
    return fields


class V1:
    """The ASGI app behind every `/v1` path."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.chain = gateway.chain
        self.limit = gateway.config.server.max_body_bytes
        self.forwarder = Forwarder(gateway, headers=self._headers)
        self.endpoints: dict[str, dict[str, Endpoint]] = {}
        # Without settle implementations (the bare core) there is nothing to shield from cancellation.
        self.settles = bool(self.chain.implementations("resayil_settle"))
        # The admit phase, and the claims it may run (`resayil_redis_claim`), only when a plugin admits.
        self.admits = bool(self.chain.implementations("resayil_admit"))
        claims = self.chain.pm.hook.resayil_redis_claim
        self.claims: HookCaller | None = claims if self.admits and claims.get_hookimpls() else None
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
        request_id = client_request_id(headers.get("x-request-id")) or new_request_id()
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
                ctx.mark("read")
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
            ctx.mark("auth")
            await self.chain.each("resayil_authorize", ctx=ctx)
            if self.admits:
                # No await between a claim that ran and `_billed`'s settle-in-finally: it is always given back.
                claim = self.claims(ctx=ctx) if self.claims is not None and endpoint.handler is None else None
                await self.chain.each("resayil_admit", ctx=ctx, claim=claim)
            ctx.mark("authorize")
            if endpoint.handler is not None:
                status, data = await endpoint.handler(ctx)
                ctx.status, ctx.first_byte_at = status, time.perf_counter()
                await send_json(send, status, data, self._headers(ctx))
            else:
                await self._billed(ctx, endpoint, receive, send)
        except ClientGone:
            ctx.outcome = "client_gone"
        except GatewayError as exc:
            ctx.error_code = exc.code
            if ctx.outcome == "pending":
                ctx.outcome = "refused"
            if ctx.first_byte_at is None:  # nothing was sent yet: the error is the answer
                ctx.status = exc.status
                await send_error(send, exc, self._headers(ctx))
        except Exception as exc:
            if (cause := outage_cause(exc)) is None:
                log.exception("unexpected error", extra={"fields": {"request_id": ctx.request_id}})
                error = GatewayError("The gateway failed to handle this request; it has been logged.")
            else:
                log.warning("database unavailable: %s", cause, extra={"fields": {"request_id": ctx.request_id}})
                error = database_unavailable()
            ctx.outcome, ctx.error_code = "error", error.code
            if ctx.first_byte_at is None:
                ctx.status = error.status
                await send_error(send, error, self._headers(ctx))
        finally:
            self._log(ctx)

    def _headers(self, ctx: RequestContext) -> list[tuple[bytes, bytes]]:
        out = [(b"x-request-id", ctx.request_id.encode()), NOSNIFF]
        if ctx.response_headers:
            out.extend(header_list(ctx.response_headers))
        if ctx.marks:
            out.append((b"server-timing", server_timing(ctx).encode()))
        return out

    async def list_models(self, ctx: RequestContext) -> tuple[int, Any]:
        hidden = self.gateway.hidden_models
        models = [m for m in self.gateway.models.values() if m.name not in hidden]
        kept = await self.chain.pipe("resayil_models", value_arg="models", value=models, ctx=ctx)
        # A plugin may return any list; hidden models stay hidden whatever it returns.
        models = [m for m in kept if m.name not in hidden]
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
        watcher = DisconnectWatch(receive, task, ctx)
        try:
            await self.chain.each("resayil_reserve", ctx=ctx)
            ctx.mark("reserve")
            await self.chain.each("resayil_route", ctx=ctx)
            ctx.mark("route")
            guarded = client_send(send)
            while True:
                if ctx.upstream is None:
                    raise NotFound("No upstream serves this model.", code="model_not_found", param="model")
                try:
                    await self.forwarder.forward(ctx, endpoint.upstream_path or "", guarded)
                    break
                except UpstreamFailure as exc:
                    if ctx.first_byte_at is not None or not exc.retryable:
                        raise
                    if not await self.chain.first("resayil_retry", ctx=ctx, error=exc):
                        raise
                    ctx.mark("retry")
                    ctx.outcome = "pending"
        except asyncio.CancelledError:
            if ctx.outcome != "client_gone":
                raise
            task.uncancel()
            if ctx.sent_upstream and not ctx.stream and ctx.first_byte_at is None:
                usage_rules.charge_the_bound(ctx, "the client left before its whole answer")
        except ClientGone:
            ctx.outcome = "client_gone"
        except GatewayError as exc:
            if ctx.outcome == "pending":
                ctx.outcome = "refused"
            if ctx.first_byte_at is None:
                ctx.status = exc.status  # what the client is about to get, for settle to record
            raise
        except Exception as exc:
            if ctx.first_byte_at is None:  # what the client is about to get (`__call__`), for settle to record
                ctx.status = 503 if database_outage(exc) else 500
            raise
        finally:
            watcher.cancel()
            ctx.finished_at = time.perf_counter()
            if ctx.outcome == "client_gone" and not ctx.status:
                ctx.status = CLIENT_CLOSED
            ctx.usage = usage_rules.bounded(ctx)
            await self._settle(ctx)

    async def _settle(self, ctx: RequestContext) -> None:
        if not self.settles:
            return
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
                    "timing_ms": timing_fields(ctx) if ctx.marks else None,
                }
            },
        )


class DisconnectWatch:
    """Cancels the request's task when the client goes away.

    Watching costs a task and a pending `receive` per request, about a sixth of the bare core's CPU, so
    it starts only once the request has run for `after` seconds: a quick answer never pays for it, a
    slow one (every real generation) is watched from then on. A client gone before that is still seen
    at once when the watch starts, since `receive` then returns its disconnect straight away.
    """

    __slots__ = ("_handle", "_task", "ctx", "receive", "task")

    def __init__(self, receive: Receive, task: asyncio.Task[Any], ctx: RequestContext, *, after: float = 0.05) -> None:
        self.receive, self.task, self.ctx = receive, task, ctx
        self._task: asyncio.Task[None] | None = None
        self._handle: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(after, self._start)

    def _start(self) -> None:
        self._handle = None
        self._task = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                if self.ctx.outcome == "pending":
                    self.ctx.outcome = "client_gone"
                    self.task.cancel()
                return

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        if self._task is not None:
            self._task.cancel()


def client_send(send: Send) -> Send:
    """`send` that reports a vanished client as ClientGone, whatever the server raises."""

    async def guarded(message: Any) -> None:
        try:
            await send(message)
        except Exception:
            raise ClientGone from None

    return guarded
