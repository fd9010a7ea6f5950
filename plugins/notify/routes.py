"""notify's HTTP API: the admins' outbox and fail2ban's ban reports (users' opt-outs are in `PATCH /api/me`,
through the `PREFERENCES` service: preferences.py).

- `GET /api/admin/outbox?status=&event=&recipient=&limit=&cursor=` (admins): messages, newest first.
- `POST /api/admin/outbox/{id}/resend` (admins; optional body `{"reason"}`): queue a message again now, with
  its `notify.resend` audit row (edge/audit.py, target `outbox:<id>`) in the same transaction; 409 while it
  is being sent.
- `POST /internal/fail2ban` (fail2ban's action on this host): publishes `ip.banned`.
- `GET` / `POST /api/notify/webhooks/whatsapp` (Meta): the Cloud API's handshake and status webhooks
  (statuses.py).
"""

from __future__ import annotations

import hmac
import ipaddress
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from edge import audit
from edge.errors import Forbidden, GatewayError, NotFound
from edge.inputs import FieldError, Form, choice, integer, query_number, read_body, read_json, text
from edge.services import GUARDS
from plugins.notify import outbox, statuses
from plugins.notify.notices import IpBanned
from plugins.notify.tables import STATUSES
from plugins.notify.templates import EVENTS

if TYPE_CHECKING:
    from plugins.notify import Plugin

WEBHOOK_PATH = "/api/notify/webhooks/whatsapp"
MAX_PAGE = 200
BIGINT_MAX = 2**63 - 1
# Headers a reverse proxy adds: a request carrying one was relayed, so its loopback peer is not its origin.
_RELAYED = ("x-forwarded-for", "forwarded", "x-real-ip")
_JAIL = re.compile(r"[A-Za-z0-9._-]{1,64}")
_PHONE = re.compile(r"\+[1-9][0-9]{6,14}")
# fail2ban's `<time>` is Unix seconds; anything past year 9999 is not a time.
_LATEST = 253402300799
MESSAGES = {
    "limit_invalid": f"Must be a whole number from 1 to {MAX_PAGE}.",
    "cursor_invalid": "Must be the next_cursor of a previous page.",
    "recipient_invalid": "Must be a phone number in E.164, such as +96512345678.",
}


def _ip(value: Any) -> str:
    if isinstance(value, str) and len(value) <= 45:
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            pass
    raise FieldError("ip_invalid", "`ip` must be an IPv4 or IPv6 address.")


def _jail(value: Any) -> str:
    if not isinstance(value, str) or not _JAIL.fullmatch(value):
        raise FieldError("jail_invalid", "`jail` must be 1 to 64 of A-Z, a-z, 0-9, '.', '_', '-'.")
    return value


def _time(value: Any) -> datetime:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= _LATEST:
        raise FieldError("time_invalid", "`time` must be the ban's Unix time in seconds.")
    return datetime.fromtimestamp(value, UTC).replace(tzinfo=None)


class NotifyApi:
    def __init__(self, plugin: Plugin) -> None:
        self.plugin = plugin

    # ---- admins --------------------------------------------------------------------------------------

    async def list_outbox(self, request: Request) -> Response:
        await self.plugin.gateway.service(GUARDS).require_admin(request)
        query = request.query_params
        form = Form(query, messages=MESSAGES)
        form.only(("status", "event", "recipient", "limit", "cursor"))
        status = form.take("status", choice(subject="status", options=STATUSES)) if "status" in query else None
        event = form.take("event", choice(subject="event", options=tuple(EVENTS))) if "event" in query else None
        recipient = query.get("recipient")
        if recipient is not None and not _PHONE.fullmatch(recipient):
            form.fail("recipient", "recipient_invalid")
        limit = query_number(query.get("limit", "50"), top=MAX_PAGE) or 0
        if limit < 1:
            form.fail("limit", "limit_invalid")
        cursor = query_number(query["cursor"], top=BIGINT_MAX) if "cursor" in query else None
        if "cursor" in query and cursor is None:
            form.fail("cursor", "cursor_invalid")
        form.check()
        rows, next_cursor = await outbox.page(
            self.plugin.gateway.database, status=status, event=event, recipient=recipient, limit=limit, before=cursor
        )
        return JSONResponse({"object": "list", "data": rows, "next_cursor": next_cursor})

    async def resend(self, request: Request) -> Response:
        admin = await self.plugin.gateway.service(GUARDS).require_admin(request)
        row_id = int(request.path_params["message_id"])
        form = Form(await read_json(request))
        form.only(("reason",))
        reason = form.take("reason", text(subject="reason", max_length=500)) if "reason" in form.data else None
        form.check()
        actor = audit.Actor.of(admin, request)

        async def audited(conn: AsyncConnection, row: outbox.Row) -> None:
            before = {
                "event_name": row.event_name,
                "event_id": row.event_id,
                "audience": row.audience,
                "recipient": row.recipient,
                "status_before": row.status,
                "attempts_before": int(row.attempts),
            }
            await actor.record(conn, "notify.resend", f"outbox:{row_id}", reason=reason, details=before)

        found = None
        try:
            if row_id <= BIGINT_MAX:
                found = await outbox.resend(
                    self.plugin.gateway.database, row_id=row_id, now=self.plugin.now(), also=audited
                )
        except outbox.Busy:
            raise GatewayError("The message is being sent right now.", status=409, code="message_sending") from None
        if found is None:
            raise NotFound("There is no message with this id.", code="message_not_found")
        return JSONResponse({"message": outbox.shown(found)})

    # ---- fail2ban ------------------------------------------------------------------------------------

    def _from_fail2ban(self, request: Request) -> None:
        """403 unless the call comes straight from this host with the configured token (none: never)."""
        peer = request.client.host if request.client else ""
        try:
            local = ipaddress.ip_address(peer).is_loopback
        except ValueError:
            local = False
        relayed = any(name in request.headers for name in _RELAYED)
        expected = self.plugin.fail2ban_token
        given = request.headers.get("authorization", "")
        token_ok = expected is not None and hmac.compare_digest(given.encode(), f"Bearer {expected}".encode())
        if not (local and not relayed and token_ok):
            raise Forbidden("This endpoint is for the gateway host's fail2ban only.", code="forbidden")

    async def fail2ban(self, request: Request) -> Response:
        self._from_fail2ban(request)
        form = Form(await read_json(request))
        form.only(("ip", "jail", "failures", "time"))
        ip = form.take("ip", _ip)
        jail = form.take("jail", _jail)
        failures = form.take("failures", integer(subject="failures", low=0, high=10**6))
        banned_at = form.take("time", _time)
        form.check()
        event = IpBanned(ip=ip, jail=jail, failures=failures, banned_at=banned_at)
        await self.plugin.gateway.events.publish(event)
        return JSONResponse({"id": event.id}, status_code=202)

    # ---- Meta's status webhooks ---------------------------------------------------------------------

    async def verify_webhook(self, request: Request) -> Response:
        challenge = self.plugin.webhook_secrets.challenge(request.query_params)
        if challenge is None:
            raise Forbidden("The verify token is missing or wrong.", code="forbidden")
        return PlainTextResponse(challenge)

    async def status_webhook(self, request: Request) -> Response:
        body = await read_body(request, limit=statuses.MAX_BODY)
        if not self.plugin.webhook_secrets.signed(body, request.headers.get("x-hub-signature-256")):
            raise GatewayError("The webhook signature is missing or wrong.", status=401, code="invalid_signature")
        try:
            payload: object = orjson.loads(body)
        except orjson.JSONDecodeError:
            payload = None
        found = list(statuses.statuses(payload))
        changed = await statuses.apply(self.plugin.gateway.database, found, now=self.plugin.now())
        return JSONResponse({"ok": True, "statuses": len(found), "changed": changed})


def build(plugin: Plugin) -> list[BaseRoute]:
    api = NotifyApi(plugin)
    return [
        Route("/api/admin/outbox", api.list_outbox, methods=["GET"]),
        Route("/api/admin/outbox/{message_id:int}/resend", api.resend, methods=["POST"]),
        Route("/internal/fail2ban", api.fail2ban, methods=["POST"]),
        Route(WEBHOOK_PATH, api.verify_webhook, methods=["GET"]),
        Route(WEBHOOK_PATH, api.status_webhook, methods=["POST"]),
    ]
