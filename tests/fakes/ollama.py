"""A fake Ollama server for tests and benchmarks.

It speaks Ollama's OpenAI-compatible API (``/v1/chat/completions``, ``/v1/embeddings``,
``/v1/models``) and a slice of its native API (``/api/chat``, ``/api/tags``, ``/api/ps``,
``/api/version``). Behaviour is steered by :class:`FakeSettings`, which may be mutated while
the server runs.

Errors follow Ollama: native routes answer ``{"error": "..."}``; ``/v1`` routes wrap the same
message the way Ollama's OpenAI middleware does (``{"error": {"message", "type", "param",
"code"}}`` with type ``invalid_request_error`` for 400, ``not_found_error`` for 404 and
``api_error`` otherwise).

In a test::

    async with run_fake(FakeSettings(chunks=3)) as fake:
        ...  # talk to fake.url

As a process (benchmarks)::

    python -m tests.fakes.ollama --port 11434 --latency 0.05 --chunks 20
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypedDict

import orjson
from aiohttp import web

from tests.fakes import godecode, process
from tests.fakes.godecode import GoType

__all__ = ["FakeOllama", "FakeSettings", "ServedRequest", "main", "run_fake"]

JsonObject = dict[str, object]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

OLLAMA_VERSION = "0.12.0"
BUSY_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"
EMBEDDING_DIMS = 8

_JSON = "application/json"
_DONE = b"data: [DONE]\n\n"
_MODIFIED_AT = "2025-01-01T00:00:00Z"
_MODIFIED_UNIX = 1735689600
_TOKENS: list[bytes] = []


@dataclass
class FakeSettings:
    """Knobs of the fake; read on every request, so they may be changed at runtime."""

    latency: float = 0.0
    chunks: int = 5
    chunk_interval: float = 0.0
    parallel: int = 0
    max_queue: int = 512
    abort_after: int | None = None
    error_after: int | None = None
    missing_usage: bool = False
    fail_status: int | None = None
    fail_body: JsonObject | str | bytes | None = None
    fail_times: int = 0
    require_key: str | None = None
    models: list[str] = field(default_factory=list)
    name: str = "ollama"
    # A file answers wait for (after `latency`): a test opens it when it has seen what it needed to see
    # before any answer settles, instead of betting on a latency being long enough on a loaded machine.
    gate: str | None = None
    # Seconds between a stream's last event and the end of its chunked body (Go's server writes them apart).
    end_delay: float = 0.0
    # A request whose message text contains this answers 500 every time, as a runner that crashes on one
    # input does; other requests are served as usual.
    poison: str | None = None
    # Models that answer 500 to every request (a broken model file, or one too large to load).
    broken_models: list[str] = field(default_factory=list)
    # Replaces the usage object the answer reports (whole answers, and a stream's usage chunk), e.g.
    # {"prompt_tokens": 1e30} for an upstream that miscounts.
    usage: JsonObject | None = None
    # A 200 answer with this body and content type instead of a completion (an upstream that answers garbage).
    answer_body: bytes | None = None
    answer_type: str = "text/html; charset=utf-8"


class ServedRequest(TypedDict):
    """Summary of a request, recorded when it starts being served (after queueing)."""

    arrival: int
    path: str
    model: str
    stream: bool
    # The body as sent, and as Ollama's Go decoding reads it (what the fake acted on).
    body: JsonObject
    decoded: JsonObject
    headers: dict[str, str]
    # The client's "address:port": the same for requests that came over one kept-alive connection.
    peer: str


class _HttpError(Exception):
    def __init__(self, status: int, message: str, raw: JsonObject | bytes | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.raw = raw


class _Abort(Exception):
    """Raised after the transport was aborted on purpose."""


# --------------------------------------------------------------------------- helpers


def _token(i: int) -> bytes:
    while len(_TOKENS) <= i:
        _TOKENS.append(f"tok{len(_TOKENS)} ".encode())
    return _TOKENS[i]


def _count_tokens(text: str) -> int:
    return (len(text.encode()) + 3) // 4


def _content_text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        return "".join(t for t in parts if isinstance(t, str))
    return ""


def prompt_token_count(messages: Sequence[object]) -> int:
    """Sum over messages of ceil(utf8 bytes of the content / 4) + 4."""
    total = 0
    for m in messages:
        content = m.get("content") if isinstance(m, dict) else None
        total += _count_tokens(_content_text(content)) + 4
    return total


def _embedding(text: str) -> list[float]:
    digest = hashlib.blake2b(text.encode(), digest_size=EMBEDDING_DIMS).digest()
    return [round(b / 127.5 - 1.0, 6) for b in digest]


def _openai_error(status: int, message: str) -> JsonObject:
    kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def _error_body(openai: bool, status: int, message: str) -> JsonObject:
    return _openai_error(status, message) if openai else {"error": message}


def _json_response(payload: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, content_type=_JSON)


def _limit(body: JsonObject, native: bool) -> int | None:
    """The generation cap Ollama applies: `max_tokens` (its OpenAI request has no `max_completion_tokens`),
    or the native `options.num_predict`; zero or negative means no cap, as for Ollama's num_predict."""
    if native:
        options = body.get("options")
        value = options.get("num_predict") if isinstance(options, dict) else None
    else:
        value = body.get("max_tokens")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return int(value)
    return None


def _model_entry(name: str) -> JsonObject:
    return {
        "name": name,
        "model": name,
        "modified_at": _MODIFIED_AT,
        "size": 1_000_000,
        "digest": hashlib.sha256(name.encode()).hexdigest(),
        "details": {
            "parent_model": "",
            "format": "gguf",
            "family": "fake",
            "families": ["fake"],
            "parameter_size": "1B",
            "quantization_level": "Q4_0",
        },
    }


@dataclass
class _Generation:
    """What one chat request produces."""

    model: str
    count: int
    finish: str
    prompt_tokens: int
    cid: str
    created: int
    started_ns: int = field(default_factory=time.perf_counter_ns)
    load_ns: int = 0
    first_ns: int = 0

    @property
    def text(self) -> str:
        return b"".join(_token(i) for i in range(self.count)).decode()

    def usage(self, override: JsonObject | None = None) -> JsonObject:
        if override is not None:
            return override
        total = self.prompt_tokens + self.count
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.count, "total_tokens": total}


# --------------------------------------------------------------------------- server


class FakeOllama:
    """The fake server: an aiohttp application plus counters that tests inspect."""

    def __init__(self, settings: FakeSettings | None = None) -> None:
        self.settings = settings if settings is not None else FakeSettings()
        self.url = ""
        self.in_flight = 0
        self.max_in_flight_seen = 0
        self.served: list[ServedRequest] = []
        self.arrivals = 0
        self.failures = 0
        self.rejected = 0
        self.loaded: set[str] = set()
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._ids = 0
        self._runner: web.AppRunner | None = None
        self.app = self._make_app()

    # ------------------------------------------------------------------ lifecycle

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def reset(self) -> None:
        """Clear the counters and history (not the settings, not requests in progress)."""
        self.served.clear()
        self.max_in_flight_seen = self.in_flight
        self.arrivals = 0
        self.failures = 0
        self.rejected = 0
        self.loaded.clear()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        # handler_cancellation: like Ollama (Go request contexts), a client that disconnects while
        # queued or generating is dropped, which frees its queue place or slot.
        runner = web.AppRunner(
            self.app, access_log=None, handle_signals=False, shutdown_timeout=0.5, handler_cancellation=True
        )
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runner = runner
        address = runner.addresses[0]
        self.url = f"http://{host}:{address[1]}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    def _make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._v1_chat)
        app.router.add_post("/v1/embeddings", self._v1_embeddings)
        app.router.add_get("/v1/models", self._v1_models)
        app.router.add_post("/api/chat", self._api_chat)
        app.router.add_get("/api/tags", self._api_tags)
        app.router.add_get("/api/ps", self._api_ps)
        app.router.add_get("/api/version", self._api_version)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        openai = request.path.startswith("/v1/")
        try:
            key = self.settings.require_key
            if key is not None and request.headers.get("Authorization") != f"Bearer {key}":
                raise _HttpError(401, "unauthorized")
            return await handler(request)
        except _HttpError as exc:
            if isinstance(exc.raw, bytes):
                return web.Response(body=exc.raw, status=exc.status, content_type="text/plain")
            body = exc.raw if exc.raw is not None else _error_body(openai, exc.status, exc.message)
            return _json_response(body, exc.status)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return _json_response(_error_body(openai, exc.status, exc.reason.lower()), exc.status)

    # ------------------------------------------------------------------ request intake

    async def _read(self, request: web.Request, spec: GoType) -> tuple[JsonObject, JsonObject, str]:
        """The body as sent (for tests to inspect) and as Ollama's Go server decodes it (what the fake acts on)."""
        raw = await request.read()
        if not raw:
            raise _HttpError(400, "missing request body")
        try:
            wire = orjson.loads(raw)
            parsed = godecode.loads(raw)
        except (orjson.JSONDecodeError, ValueError) as exc:
            raise _HttpError(400, f"invalid JSON: {exc}") from None
        if not isinstance(wire, dict):
            raise _HttpError(400, "request body must be a JSON object")
        try:
            body: JsonObject = godecode.decode(parsed, spec)
        except godecode.GoTypeError as exc:
            raise _HttpError(400, str(exc)) from None
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise _HttpError(400, "model is required")
        models = self.settings.models
        if models and model not in models and f"{model}:latest" not in models:
            raise _HttpError(404, f'model "{model}" not found, try pulling it first')
        return wire, body, model

    def _maybe_fail(self) -> None:
        s = self.settings
        if s.fail_status is None or (s.fail_times > 0 and self.failures >= s.fail_times):
            return
        self.failures += 1
        raw = s.fail_body if isinstance(s.fail_body, (dict, bytes)) else None
        message = s.fail_body if isinstance(s.fail_body, str) else f"fake failure (status {s.fail_status})"
        raise _HttpError(s.fail_status, message, raw)

    def _wake(self) -> None:
        limit = self.settings.parallel
        while self._waiters and (limit <= 0 or self.in_flight < limit):
            fut = self._waiters.popleft()
            if fut.done():
                continue
            self.in_flight += 1
            fut.set_result(None)
        self.max_in_flight_seen = max(self.max_in_flight_seen, self.in_flight)

    async def _acquire(self) -> None:
        self._wake()
        limit = self.settings.parallel
        if not self._waiters and (limit <= 0 or self.in_flight < limit):
            self.in_flight += 1
            self.max_in_flight_seen = max(self.max_in_flight_seen, self.in_flight)
            return
        if len(self._waiters) >= self.settings.max_queue:
            self.rejected += 1
            raise _HttpError(503, BUSY_MESSAGE)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._release()
            elif fut in self._waiters:
                self._waiters.remove(fut)
            raise

    def _release(self) -> None:
        self.in_flight -= 1
        self._wake()

    @contextlib.asynccontextmanager
    async def _serving(
        self, request: web.Request, wire: JsonObject, body: JsonObject, model: str, stream: bool
    ) -> AsyncIterator[None]:
        self.arrivals += 1
        arrival = self.arrivals
        self._maybe_fail()
        await self._acquire()
        try:
            headers = {k.lower(): v for k, v in request.headers.items()}
            peername = request.transport.get_extra_info("peername") if request.transport is not None else None
            self.served.append(
                ServedRequest(
                    arrival=arrival,
                    path=request.path,
                    model=model,
                    stream=stream,
                    body=wire,
                    decoded=body,
                    headers=headers,
                    peer=f"{peername[0]}:{peername[1]}" if peername else "",
                )
            )
            self.loaded.add(model)
            poison = self.settings.poison
            if poison is not None and poison in orjson.dumps(body.get("messages") or body.get("input")).decode():
                raise _HttpError(500, "llama runner process has terminated: exit status 2")
            if model in self.settings.broken_models:
                raise _HttpError(500, f"llama runner process has terminated: error loading model {model}")
            yield
        finally:
            self._release()

    async def _wait(self) -> None:
        """The time an answer takes to start: `latency`, then until the `gate` file exists."""
        if self.settings.latency > 0:
            await asyncio.sleep(self.settings.latency)
        # Another process makes the file: there is nothing to await but its appearance.
        while self.settings.gate is not None and not os.path.exists(self.settings.gate):  # noqa: ASYNC110, ASYNC240
            await asyncio.sleep(0.01)

    async def _start_generation(self, body: JsonObject, model: str, native: bool) -> _Generation:
        messages = body.get("messages")
        prompt = prompt_token_count(messages if isinstance(messages, list) else [])
        self._ids += 1
        gen = _Generation(model, 0, "stop", prompt, f"chatcmpl-{self._ids}", int(time.time()))
        s = self.settings
        gen.count = max(s.chunks, 0)
        limit = _limit(body, native)
        if limit is not None and limit < gen.count:
            gen.count, gen.finish = limit, "length"
        await self._wait()
        gen.load_ns = time.perf_counter_ns() - gen.started_ns
        return gen

    async def _generate_all(self, gen: _Generation) -> None:
        gen.first_ns = time.perf_counter_ns()
        interval = self.settings.chunk_interval
        if interval > 0 and gen.count > 1:
            await asyncio.sleep(interval * (gen.count - 1))

    # ------------------------------------------------------------------ streaming core

    async def _pump(
        self,
        request: web.Request,
        resp: web.StreamResponse,
        *,
        frames: int,
        frame: Callable[[int, bool], bytes],
        error: bytes,
    ) -> bool:
        """Write the content frames; return False when the stream was cut short by an error."""
        s = self.settings
        for i in range(frames + 1):
            if s.abort_after is not None and i == s.abort_after:
                if request.transport is not None:
                    request.transport.abort()
                raise _Abort
            if s.error_after is not None and i == s.error_after:
                await resp.write(error)
                return False
            if i == frames:
                break
            if i > 0 and s.chunk_interval > 0:
                await asyncio.sleep(s.chunk_interval)
            await resp.write(frame(i, i == frames - 1))
        return True

    async def _stream(
        self,
        request: web.Request,
        gen: _Generation,
        *,
        content_type: str,
        frames: int,
        frame: Callable[[int, bool], bytes],
        error: bytes,
        tail: Callable[[], bytes],
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": content_type})
        await resp.prepare(request)
        gen.first_ns = time.perf_counter_ns()
        try:
            if await self._pump(request, resp, frames=frames, frame=frame, error=error):
                await resp.write(tail())
                if self.settings.end_delay > 0:
                    await asyncio.sleep(self.settings.end_delay)
            await resp.write_eof()
        except (_Abort, ConnectionError):
            pass
        return resp

    # ------------------------------------------------------------------ /v1

    async def _v1_chat(self, request: web.Request) -> web.StreamResponse:
        wire, body, model = await self._read(request, godecode.CHAT_COMPLETION_REQUEST)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _HttpError(400, "[] is too short - 'messages'")
        stream = body.get("stream") is True
        async with self._serving(request, wire, body, model, stream):
            if self.settings.answer_body is not None:
                return web.Response(body=self.settings.answer_body, headers={"Content-Type": self.settings.answer_type})
            gen = await self._start_generation(body, model, native=False)
            if not stream:
                await self._generate_all(gen)
                return _json_response(self._v1_completion(gen))
            return await self._v1_stream(request, gen, body)

    def _v1_completion(self, gen: _Generation) -> JsonObject:
        out: JsonObject = {
            "id": gen.cid,
            "object": "chat.completion",
            "created": gen.created,
            "model": gen.model,
            "system_fingerprint": f"fp_{self.settings.name}",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": gen.text},
                    "finish_reason": gen.finish,
                }
            ],
        }
        if not self.settings.missing_usage:
            out["usage"] = gen.usage(self.settings.usage)
        return out

    async def _v1_stream(self, request: web.Request, gen: _Generation, body: JsonObject) -> web.StreamResponse:
        fp = f"fp_{self.settings.name}"
        common = b'{"id":"%s","object":"chat.completion.chunk","created":%d,"model":%s' % (
            gen.cid.encode(),
            gen.created,
            orjson.dumps(gen.model),
        )
        common += b',"system_fingerprint":' + orjson.dumps(fp)
        head = b"data: " + common + b',"choices":[{"index":0,"delta":{"role":"assistant","content":"'
        more = b'"},"finish_reason":null}]}\n\n'
        last = b'"},"finish_reason":"%s"}]}\n\n' % gen.finish.encode()
        count = gen.count

        def frame(i: int, final: bool) -> bytes:
            return head + (_token(i) if i < count else b"") + (last if final else more)

        options = body.get("stream_options")
        want_usage = isinstance(options, dict) and options.get("include_usage") is True
        usage = b',"choices":[],"usage":' + orjson.dumps(gen.usage(self.settings.usage)) + b"}\n\n"

        def tail() -> bytes:
            if want_usage and not self.settings.missing_usage:
                return b"data: " + common + usage + _DONE
            return _DONE

        error = b"data: " + orjson.dumps(_openai_error(500, "fake in-stream error")) + b"\n\n"
        frames = max(count, 1)  # a zero-token answer still sends one chunk carrying finish_reason
        return await self._stream(
            request, gen, content_type="text/event-stream", frames=frames, frame=frame, error=error, tail=tail
        )

    async def _v1_embeddings(self, request: web.Request) -> web.StreamResponse:
        wire, body, model = await self._read(request, godecode.EMBED_REQUEST)
        raw = body.get("input")
        inputs = [raw] if isinstance(raw, str) else raw
        if not isinstance(inputs, list) or not inputs or not all(isinstance(x, str) for x in inputs):
            raise _HttpError(400, "invalid input")
        texts = [x for x in inputs if isinstance(x, str)]
        async with self._serving(request, wire, body, model, False):
            await self._wait()
            tokens = sum(_count_tokens(t) for t in texts)
            data = [{"object": "embedding", "embedding": _embedding(t), "index": i} for i, t in enumerate(texts)]
            out: JsonObject = {"object": "list", "data": data, "model": model}
            if not self.settings.missing_usage:
                out["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
            return _json_response(out)

    async def _v1_models(self, request: web.Request) -> web.StreamResponse:
        data = [
            {"id": m, "object": "model", "created": _MODIFIED_UNIX, "owned_by": "library"} for m in self.settings.models
        ]
        return _json_response({"object": "list", "data": data})

    # ------------------------------------------------------------------ native

    async def _api_chat(self, request: web.Request) -> web.StreamResponse:
        wire, body, model = await self._read(request, godecode.NATIVE_CHAT_REQUEST)
        messages = body.get("messages") or []
        if not isinstance(messages, list):
            raise _HttpError(400, "messages must be a list")
        stream = body.get("stream") is not False
        async with self._serving(request, wire, body, model, stream):
            gen = await self._start_generation(body, model, native=True)
            created_at = datetime.now(UTC).isoformat().replace("+00:00", "Z")
            if not stream:
                await self._generate_all(gen)
                out = self._native_final(gen, created_at)
                out["message"] = {"role": "assistant", "content": gen.text}
                return _json_response(out)
            return await self._api_stream(request, gen, created_at)

    def _native_final(self, gen: _Generation, created_at: str) -> JsonObject:
        now = time.perf_counter_ns()
        first = gen.first_ns or now
        prompt_ns = max(first - gen.started_ns - gen.load_ns, 1)
        out: JsonObject = {
            "model": gen.model,
            "created_at": created_at,
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": gen.finish,
            "total_duration": now - gen.started_ns,
            "load_duration": gen.load_ns,
        }
        if not self.settings.missing_usage:
            out["prompt_eval_count"] = gen.prompt_tokens
        out["prompt_eval_duration"] = prompt_ns
        if not self.settings.missing_usage:
            out["eval_count"] = gen.count
        out["eval_duration"] = max(now - first, 1)
        return out

    async def _api_stream(self, request: web.Request, gen: _Generation, stamp: str) -> web.StreamResponse:
        head = b'{"model":%s,"created_at":"%s","message":{"role":"assistant","content":"' % (
            orjson.dumps(gen.model),
            stamp.encode(),
        )
        end = b'"},"done":false}\n'
        count = gen.count

        def frame(i: int, final: bool) -> bytes:
            return head + _token(i) + end

        def tail() -> bytes:
            return orjson.dumps(self._native_final(gen, stamp)) + b"\n"

        error = orjson.dumps({"error": "fake in-stream error"}) + b"\n"
        return await self._stream(
            request,
            gen,
            content_type="application/x-ndjson",
            frames=count,
            frame=frame,
            error=error,
            tail=tail,
        )

    async def _api_tags(self, request: web.Request) -> web.StreamResponse:
        return _json_response({"models": [_model_entry(m) for m in self.settings.models]})

    async def _api_ps(self, request: web.Request) -> web.StreamResponse:
        models = []
        for name in sorted(self.loaded):
            entry = _model_entry(name)
            del entry["modified_at"]
            entry.update({"expires_at": "2099-01-01T00:00:00Z", "size_vram": 1_000_000})
            models.append(entry)
        return _json_response({"models": models})

    async def _api_version(self, request: web.Request) -> web.StreamResponse:
        return _json_response({"version": OLLAMA_VERSION})


# --------------------------------------------------------------------------- entry points


@contextlib.asynccontextmanager
async def run_fake(settings: FakeSettings | None = None, port: int = 0) -> AsyncIterator[FakeOllama]:
    """Serve a :class:`FakeOllama` on 127.0.0.1 (port 0 = a free port) for the duration of the block."""
    fake = FakeOllama(settings)
    await fake.start("127.0.0.1", port)
    try:
        yield fake
    finally:
        await fake.stop()


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.fakes.ollama", description="Fake Ollama server.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=11434)
    p.add_argument("--latency", type=float, default=0.0, help="seconds before the response starts")
    p.add_argument("--chunks", type=int, default=5, help="completion tokens per answer")
    p.add_argument("--chunk-interval", type=float, default=0.0, help="seconds between stream chunks")
    p.add_argument("--parallel", type=int, default=0, help="concurrent slots (0 = unlimited)")
    p.add_argument("--max-queue", type=int, default=512)
    p.add_argument("--name", default="ollama", help="system_fingerprint becomes fp_<name>")
    p.add_argument("--model", action="append", default=[], help="accepted model (repeatable; none = any)")
    p.add_argument("--require-key", default=None, help="bearer key required on every request")
    p.add_argument("--poison", default=None, help="message text that makes a request answer 500")
    p.add_argument("--usage", default=None, help="JSON object reported as every answer's usage")
    p.add_argument("--gate", default=None, help="answers wait (after --latency) until this file exists")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse_args(argv)
    settings = FakeSettings(
        latency=args.latency,
        chunks=args.chunks,
        chunk_interval=args.chunk_interval,
        parallel=args.parallel,
        max_queue=args.max_queue,
        name=args.name,
        models=list(args.model),
        require_key=args.require_key,
        poison=args.poison,
        usage=orjson.loads(args.usage) if args.usage else None,
        gate=args.gate,
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(process.serve(FakeOllama(settings), args.host, args.port))


if __name__ == "__main__":
    main()
