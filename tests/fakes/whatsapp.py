"""A fake WhatsApp provider for tests: the Resayil gateway's two request shapes and the WhatsApp Cloud API.

Routes (all behind `Authorization: Bearer <token>`):

- Resayil: `POST {prefix}{send_path}` with `{"to": "+965…", "type": "text", "text": {"body": "…"}}`,
  answered `{"success": true, "message_id": "…"}`; `GET {prefix}/messages/{id}/status`; and the operator's
  older shape, `POST {prefix}{legacy_path}` with `{"phone": "+965…", "message": "…", "language": "ar"}`.
  Phones must be E.164 with the `+`. Errors: `{"success": false, "error": {"code", "message"}}`.
- Cloud API: `POST /v{N}/{phone_number_id}/messages`, `to` in digits without the `+`, templates only
  unless the recipient's 24-hour window is open (`open_windows`); a template must exist under exactly
  the locale asked for (`en` is not `en_US`) and get exactly its number of body parameters, none with a
  newline, a tab or more than four spaces in a row, filling its body to at most 1024 characters (else
  132005). Errors are the Graph API envelope `{"error": {"message", "type", "code", "error_subcode",
  "error_data", "fbtrace_id"}}`. Accepted messages are
  followed by status webhooks (`sent`, `delivered`, `read`, or `failed` with the error) posted to
  `webhook_url`, signed `X-Hub-Signature-256` with the app secret: a 200 is not a delivery.

Both sides enforce WhatsApp's pair rate: a second message to the same recipient within `pair_interval`
seconds answers 131056 (the real limit is about one every 6 s; tests shorten it, or inject `clock`).
Every request is recorded in `received`, refused ones too, with what was answered.

In a test::

    async with run_fake(FakeSettings(templates=[CloudTemplate("welcome", "ar", 2)])) as fake:
        ...  # talk to fake.url

As a process::

    python -m tests.fakes.whatsapp --port 8099 --token secret --pair-interval 0
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypedDict

import aiohttp
import orjson
from aiohttp import web

from tests.fakes import process
from tests.fakes.whatsapp_errors import CODES, graph_error, resayil_error

__all__ = ["CloudTemplate", "FakeSettings", "FakeWhatsApp", "Received", "main", "run_fake"]

JsonObject = dict[str, object]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

E164 = re.compile(r"\+[1-9][0-9]{6,14}")
CLOUD_TO = re.compile(r"[1-9][0-9]{6,14}")
GRAPH_PATH = re.compile(r"/v[0-9]+\.[0-9]+/(?P<phone_id>[^/]+)/messages")
# What Meta refuses inside a template parameter.
BAD_PARAM = re.compile(r"[\n\t]| {5,}")
MAX_TEXT = 4096
# A template's body, parameters filled in (132005 past it).
MAX_TEMPLATE_BODY = 1024


@dataclass(frozen=True)
class CloudTemplate:
    """An approved template: its name, the locale it was approved under, its body parameter count, and how
    many characters its body has besides the parameters (the filled-in body may have at most 1024)."""

    name: str
    language: str
    params: int
    text_length: int = 0


@dataclass
class FakeSettings:
    """Knobs of the fake; read on every request, so they may be changed while it runs."""

    token: str = "test-token"
    # Resayil's base path (the real base is https://wa.resayil.io/api/v1) and its two send paths.
    prefix: str = "/api/v1"
    send_path: str = "/messages/send"
    legacy_path: str = "/send"
    # Cloud API: the sending number's id, the approved templates, recipients (digits) whose 24-hour
    # customer window is open (free text allowed).
    phone_number_id: str = "1234567890"
    templates: list[CloudTemplate] = field(default_factory=list)
    open_windows: set[str] = field(default_factory=set)
    # WhatsApp error codes answered to the next sends, one each, in order (see whatsapp_errors.CODES).
    fail_next: list[int] = field(default_factory=list)
    # Every request answers this status with an HTML page (a proxy in front of a provider that is down).
    outage_status: int | None = None
    # Every request has its connection closed without an answer.
    reset: bool = False
    # Seconds before each answer.
    latency: float = 0.0
    # Accepted sends answer 2xx but without a message id.
    missing_id: bool = False
    # Minimum seconds between two messages to one recipient; 0 turns the pair rate off.
    pair_interval: float = 6.0
    # Recipients (E.164) whose messages are accepted, then fail with 131026 (status and webhook).
    undeliverable: set[str] = field(default_factory=set)
    webhook_url: str | None = None
    app_secret: str = "test-app-secret"
    # Seconds between a send's answer and its first status webhook (Meta's come after the answer, later).
    webhook_delay: float = 0.0
    clock: Callable[[], float] = time.monotonic


class Received(TypedDict):
    """One request as the fake saw it and what it answered."""

    api: str  # "resayil", "legacy", "cloud" or "status"
    path: str
    headers: dict[str, str]
    body: object
    to: str | None
    text: str | None
    template: str | None
    language: str | None
    params: list[str]
    status: int
    code: int | None
    message_id: str | None


class _Refused(Exception):
    """A send refused with a WhatsApp error code."""

    def __init__(self, code: int, detail: str, *, unauthenticated: bool = False) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        # No or a wrong token: the Cloud API says 190, the Resayil gateway a plain 401.
        self.unauthenticated = unauthenticated


@dataclass
class _Send:
    """What a send asked for, whichever shape it came in."""

    api: str
    to: str
    text: str | None = None
    template: str | None = None
    language: str | None = None
    params: list[str] = field(default_factory=list)


def _json(payload: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, content_type="application/json")


def _digits(phone: str) -> str:
    return phone.removeprefix("+")


class FakeWhatsApp:
    """The fake server: an aiohttp application plus what it received, for tests to inspect."""

    def __init__(self, settings: FakeSettings | None = None) -> None:
        self.settings = settings if settings is not None else FakeSettings()
        self.url = ""
        self.received: list[Received] = []
        # Message id -> its current status ("sent", "delivered", "read", "failed").
        self.statuses: dict[str, str] = {}
        self.webhook_answers: list[int] = []
        self._last_send: dict[str, float] = {}
        self._ids = 0
        self._hooks: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self.app = self._make_app()

    @property
    def accepted(self) -> list[Received]:
        """The sends that were answered with a message id, in order."""
        return [r for r in self.received if r["message_id"] is not None]

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        self._runner = runner
        self.url = f"http://{host}:{runner.addresses[0][1]}"
        return self.url

    async def stop(self) -> None:
        for task in list(self._hooks):
            task.cancel()
        await asyncio.gather(*self._hooks, return_exceptions=True)
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def webhooks_sent(self) -> None:
        """Wait until every status webhook scheduled so far has been posted."""
        while self._hooks:
            await asyncio.gather(*list(self._hooks), return_exceptions=True)

    def _make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=256 * 1024)
        app.router.add_post("/{path:.*}", self._post)
        app.router.add_get("/{path:.*}", self._get)
        return app

    # ------------------------------------------------------------------ intake

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        s = self.settings
        if s.reset:
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=500)
        if s.latency > 0:
            await asyncio.sleep(s.latency)
        if s.outage_status is not None:
            page = b"<html><body><h1>Service Unavailable</h1></body></html>"
            return web.Response(body=page, status=s.outage_status, content_type="text/html")
        return await handler(request)

    def _record(
        self,
        request: web.Request,
        body: object,
        send: _Send | None,
        *,
        status: int,
        code: int | None = None,
        message_id: str | None = None,
    ) -> None:
        self.received.append(
            Received(
                api=send.api if send else "unknown",
                path=request.path,
                headers=dict(request.headers),
                body=body,
                to=send.to if send else None,
                text=send.text if send else None,
                template=send.template if send else None,
                language=send.language if send else None,
                params=send.params if send else [],
                status=status,
                code=code,
                message_id=message_id,
            )
        )

    def _authorized(self, request: web.Request) -> bool:
        given = request.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {self.settings.token}".encode())

    def _trace(self) -> str:
        return hashlib.sha256(str(self._ids + len(self.received)).encode()).hexdigest()[:22]

    async def _post(self, request: web.Request) -> web.StreamResponse:
        s = self.settings
        cloud = GRAPH_PATH.fullmatch(request.path)
        resayil = {s.prefix + s.send_path: "resayil", s.prefix + s.legacy_path: "legacy"}.get(request.path)
        if cloud is None and resayil is None:
            return _json({"success": False, "error": {"code": 404, "message": "not found"}}, 404)
        raw = await request.read()
        try:
            body: object = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = raw.decode("utf-8", "replace")
        send: _Send | None = None
        try:
            if not self._authorized(request):
                raise _Refused(190, "Invalid OAuth access token", unauthenticated=True)
            if not isinstance(body, dict):
                raise _Refused(100, "the body must be a JSON object")
            if cloud is not None:
                if cloud["phone_id"] != s.phone_number_id:
                    raise _Refused(
                        100, f"Unsupported post request. Object with ID '{cloud['phone_id']}' does not exist"
                    )
                send = self._cloud_send(body)
            else:
                send = self._legacy_send(body) if resayil == "legacy" else self._resayil_send(body)
            self._admit(send)
        except _Refused as exc:
            return self._refuse(request, body, send, exc, cloud=cloud is not None)
        return self._accept(request, body, send)

    def _refuse(
        self, request: web.Request, body: object, send: _Send | None, exc: _Refused, *, cloud: bool
    ) -> web.Response:
        if exc.unauthenticated and not cloud:
            status, payload = 401, {"success": False, "error": {"code": 401, "message": "Unauthenticated."}}
        elif cloud:
            status, payload = graph_error(exc.code, exc.detail, trace=self._trace())
        else:
            status, payload = resayil_error(exc.code, exc.detail)
        self._record(request, body, send, status=status, code=exc.code)
        return _json(payload, status)

    def _admit(self, send: _Send) -> None:
        """The checks that come after a well-formed request: queued failures, then the pair rate."""
        s = self.settings
        if s.fail_next:
            code = s.fail_next.pop(0)
            raise _Refused(code, f"fake failure {code}")
        now = s.clock()
        last = self._last_send.get(_digits(send.to))
        if s.pair_interval > 0 and last is not None and now - last < s.pair_interval:
            raise _Refused(
                131056,
                "too many messages sent from this phone number to the same phone number in a short period of time",
            )
        self._last_send[_digits(send.to)] = now

    def _accept(self, request: web.Request, body: object, send: _Send) -> web.Response:
        s = self.settings
        self._ids += 1
        message_id = f"wamid.fake{self._ids:08d}" if send.api == "cloud" else f"msg_{self._ids:08d}"
        failed = "+" + _digits(send.to) in s.undeliverable
        self.statuses[message_id] = "failed" if failed else "delivered"
        if send.api == "cloud":
            payload: JsonObject = {
                "messaging_product": "whatsapp",
                "contacts": [{"input": send.to, "wa_id": send.to}],
                "messages": [{"id": message_id, "message_status": "accepted"}],
            }
            if s.missing_id:
                payload["messages"] = []
            elif s.webhook_url:
                task = asyncio.get_running_loop().create_task(self._post_statuses(message_id, send.to, failed))
                self._hooks.add(task)
                task.add_done_callback(self._hooks.discard)
        else:
            payload = {"success": True} if s.missing_id else {"success": True, "message_id": message_id}
        recorded = None if s.missing_id else message_id
        self._record(request, body, send, status=200, message_id=recorded)
        return _json(payload)

    # ------------------------------------------------------------------ request shapes

    def _resayil_send(self, body: JsonObject) -> _Send:
        to, text = body.get("to"), body.get("text")
        if body.get("type") != "text":
            raise _Refused(100, "type must be text")
        if not isinstance(text, dict) or set(text) != {"body"} or not isinstance(text["body"], str):
            raise _Refused(100, "text must be {body: string}")
        return _Send("resayil", self._e164(to, "to"), text=self._text(text["body"]))

    def _legacy_send(self, body: JsonObject) -> _Send:
        unknown = set(body) - {"phone", "message", "language"}
        if unknown:
            raise _Refused(100, f"unknown fields: {sorted(unknown)}")
        message, language = body.get("message"), body.get("language")
        if not isinstance(message, str):
            raise _Refused(100, "message must be a string")
        if language not in {"ar", "en"}:
            raise _Refused(100, "language must be ar or en")
        return _Send("legacy", self._e164(body.get("phone"), "phone"), text=self._text(message), language=language)

    def _cloud_send(self, body: JsonObject) -> _Send:
        if body.get("messaging_product") != "whatsapp":
            raise _Refused(100, "The parameter messaging_product is required.")
        if body.get("recipient_type", "individual") != "individual":
            raise _Refused(100, "recipient_type must be individual")
        to = body.get("to")
        if not isinstance(to, str) or not CLOUD_TO.fullmatch(to):
            raise _Refused(100, "to must be the recipient's number in digits, country code first, without +")
        kind = body.get("type", "text")
        if kind == "text":
            text = body.get("text")
            if not isinstance(text, dict) or not isinstance(text.get("body"), str):
                raise _Refused(100, "text.body is required")
            if to not in self.settings.open_windows:
                raise _Refused(131047, "More than 24 hours have passed since the recipient last replied")
            return _Send("cloud", to, text=self._text(text["body"]))
        if kind != "template":
            raise _Refused(100, f"unsupported message type {kind!r}")
        return self._template(to, body.get("template"))

    def _template(self, to: str, template: object) -> _Send:
        if not isinstance(template, dict):
            raise _Refused(100, "template is required")
        name, language = template.get("name"), template.get("language")
        code = language.get("code") if isinstance(language, dict) else None
        if not isinstance(name, str) or not isinstance(code, str):
            raise _Refused(100, "template.name and template.language.code are required")
        found = [t for t in self.settings.templates if t.name == name and t.language == code]
        if not found:
            raise _Refused(132001, f"template name ({name}) does not exist in {code}")
        params = self._params(template.get("components", []))
        if len(params) != found[0].params:
            raise _Refused(132000, f"expected {found[0].params} parameters, got {len(params)}")
        if found[0].text_length + sum(len(p) for p in params) > MAX_TEMPLATE_BODY:
            raise _Refused(132005, f"the filled-in body is longer than {MAX_TEMPLATE_BODY} characters")
        return _Send("cloud", to, template=name, language=code, params=params)

    def _params(self, components: object) -> list[str]:
        if not isinstance(components, list):
            raise _Refused(100, "components must be a list")
        params: list[str] = []
        for component in components:
            if not isinstance(component, dict) or component.get("type") != "body":
                raise _Refused(100, "only body components are supported by these templates")
            for p in component.get("parameters", []):
                if not isinstance(p, dict) or p.get("type") != "text" or not isinstance(p.get("text"), str):
                    raise _Refused(100, "a parameter must be {type: text, text: string}")
                if BAD_PARAM.search(p["text"]) or not p["text"]:
                    raise _Refused(
                        132018,
                        "Param text cannot be empty, have new-line/tab characters or more than 4 consecutive spaces",
                    )
                params.append(p["text"])
        return params

    @staticmethod
    def _e164(phone: object, name: str) -> str:
        if not isinstance(phone, str) or not E164.fullmatch(phone):
            raise _Refused(100, f"{name} must be a phone number in E.164 (+ and country code)")
        return phone

    @staticmethod
    def _text(text: str) -> str:
        if not text.strip() or len(text) > MAX_TEXT:
            raise _Refused(100, f"the text must have 1 to {MAX_TEXT} characters")
        return text

    # ------------------------------------------------------------------ status

    async def _get(self, request: web.Request) -> web.StreamResponse:
        s = self.settings
        match = re.fullmatch(re.escape(s.prefix) + r"/messages/(?P<id>[^/]+)/status", request.path)
        if match is None:
            return _json({"success": False, "error": {"code": 404, "message": "not found"}}, 404)
        send = _Send("status", "")
        if not self._authorized(request):
            self._record(request, None, send, status=401)
            return _json({"success": False, "error": {"code": 401, "message": "Unauthenticated."}}, 401)
        status = self.statuses.get(match["id"])
        if status is None:
            self._record(request, None, send, status=404)
            return _json({"success": False, "error": {"code": 404, "message": "message not found"}}, 404)
        self._record(request, None, send, status=200)
        return _json({"success": True, "message_id": match["id"], "status": status})

    async def _post_statuses(self, message_id: str, to: str, failed: bool) -> None:
        """What WhatsApp posts after accepting a message: sent, delivered, read; or failed with the error."""
        steps = ["failed"] if failed else ["sent", "delivered", "read"]
        await asyncio.sleep(self.settings.webhook_delay)
        async with aiohttp.ClientSession() as http:
            for step in steps:
                status: JsonObject = {
                    "id": message_id,
                    "status": step,
                    "timestamp": str(int(time.time())),
                    "recipient_id": to,
                }
                if failed:
                    title = CODES[131026].title
                    status["errors"] = [
                        {"code": 131026, "title": title, "message": title, "error_data": {"details": title}}
                    ]
                await self._post_webhook(http, status)

    async def _post_webhook(self, http: aiohttp.ClientSession, status: JsonObject) -> None:
        s = self.settings
        assert s.webhook_url is not None
        value = {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550000000", "phone_number_id": s.phone_number_id},
            "statuses": [status],
        }
        change = {"value": value, "field": "messages"}
        payload = orjson.dumps({"object": "whatsapp_business_account", "entry": [{"id": "0", "changes": [change]}]})
        signature = hmac.new(s.app_secret.encode(), payload, hashlib.sha256).hexdigest()
        headers = {"Content-Type": "application/json", "X-Hub-Signature-256": f"sha256={signature}"}
        try:
            async with http.post(s.webhook_url, data=payload, headers=headers) as answer:
                self.webhook_answers.append(answer.status)
        except aiohttp.ClientError:
            self.webhook_answers.append(0)


# --------------------------------------------------------------------------- entry points


@contextlib.asynccontextmanager
async def run_fake(settings: FakeSettings | None = None, port: int = 0) -> AsyncIterator[FakeWhatsApp]:
    """Serve a :class:`FakeWhatsApp` on 127.0.0.1 (port 0 = a free port) for the duration of the block."""
    async with process.running(FakeWhatsApp(settings), port) as fake:
        yield fake


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.fakes.whatsapp", description="Fake WhatsApp provider.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8099)
    p.add_argument("--token", default="test-token", help="the bearer token every request must carry")
    p.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    p.add_argument("--pair-interval", type=float, default=6.0, help="seconds between messages to one recipient")
    p.add_argument("--phone-number-id", default="1234567890")
    p.add_argument("--template", action="append", default=[], help="NAME:LOCALE:PARAMS, an approved template")
    p.add_argument("--webhook-url", default=None, help="where status webhooks are posted")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse_args(argv)
    templates = []
    for spec in args.template:
        name, locale, count = spec.rsplit(":", 2)
        templates.append(CloudTemplate(name, locale, int(count)))
    settings = FakeSettings(
        token=args.token,
        latency=args.latency,
        pair_interval=args.pair_interval,
        phone_number_id=args.phone_number_id,
        templates=templates,
        webhook_url=args.webhook_url,
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(process.serve(FakeWhatsApp(settings), args.host, args.port))


if __name__ == "__main__":
    main()
