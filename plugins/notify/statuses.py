"""The WhatsApp Cloud API's status webhooks: Meta tells whether a sent message was delivered or failed.

- `GET` is Meta's subscription handshake: `hub.mode=subscribe` and `hub.verify_token` equal to
  RESAYIL_WHATSAPP_CLOUD_VERIFY_TOKEN (compared in constant time) answer `hub.challenge` as plain text;
  anything else 403. Without a verify token nothing is ever verified.
- `POST` carries `X-Hub-Signature-256: sha256=<hex>`, the HMAC-SHA256 of the raw body under the app
  secret (RESAYIL_WHATSAPP_CLOUD_APP_SECRET). The signature is checked, in constant time, over the bytes
  as received and before the body is parsed; a missing or wrong one is 401, and without an app secret every
  post is 401. Only then is the body read as JSON.

What stays true: a status only moves a row the Cloud sender sent, found by the message id its send was
answered with, and only forward (`sent` to `delivered` or `failed`; `read` counts as delivered); an id we
do not know, a status we do not act on, or a repeated webhook changes nothing and is answered 200, so Meta
does not retry it. A status that overtakes the send's own answer (the row is still `sending`, its id not yet
recorded) is ignored the same way: the row stays `sent`, which is true, only less precise.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from edge.db import Database
from plugins.notify.tables import notify_outbox

APP_SECRET = "RESAYIL_WHATSAPP_CLOUD_APP_SECRET"
VERIFY_TOKEN = "RESAYIL_WHATSAPP_CLOUD_VERIFY_TOKEN"
# Meta batches up to 1000 statuses a post; a few hundred bytes each.
MAX_BODY = 1024 * 1024
MAX_CHALLENGE = 256
_FINAL = {"delivered": "delivered", "read": "delivered", "failed": "failed"}


@dataclass(frozen=True)
class Secrets:
    """The webhook's secrets from the environment; either may be missing (then its side refuses)."""

    app_secret: bytes | None = field(default=None, repr=False)
    verify_token: bytes | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Secrets:
        secret = env.get(APP_SECRET, "").strip()
        token = env.get(VERIFY_TOKEN, "").strip()
        return cls(secret.encode() if secret else None, token.encode() if token else None)

    def signed(self, body: bytes, header: str | None) -> bool:
        """Whether `header` is Meta's signature of `body` under the app secret."""
        if self.app_secret is None or header is None or not header.startswith("sha256="):
            return False
        expected = hmac.new(self.app_secret, body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(header.removeprefix("sha256=").encode(), expected.encode())

    def challenge(self, query: Mapping[str, str]) -> str | None:
        """The challenge to echo for a genuine subscription handshake, else None."""
        token = query.get("hub.verify_token", "")
        challenge = query.get("hub.challenge", "")
        if self.verify_token is None or query.get("hub.mode") != "subscribe":
            return None
        if not hmac.compare_digest(token.encode(), self.verify_token):
            return None
        # Meta sends an integer; anything else is not Meta's, and is never echoed.
        return challenge if challenge.isdigit() and len(challenge) <= MAX_CHALLENGE else None


@dataclass(frozen=True)
class Status:
    message_id: str
    status: str
    error: str | None


def statuses(payload: object) -> Iterator[Status]:
    """Every well-formed status in a webhook's `entry[].changes[].value.statuses[]`; the rest is skipped."""
    entries = payload.get("entry") if isinstance(payload, dict) else None
    for entry in entries if isinstance(entries, list) else []:
        changes = entry.get("changes") if isinstance(entry, dict) else None
        for change in changes if isinstance(changes, list) else []:
            value = change.get("value") if isinstance(change, dict) else None
            found = value.get("statuses") if isinstance(value, dict) else None
            for item in found if isinstance(found, list) else []:
                status = _status(item)
                if status is not None:
                    yield status


def _status(item: Any) -> Status | None:
    if not isinstance(item, dict):
        return None
    message_id, status = item.get("id"), item.get("status")
    if not isinstance(message_id, str) or not 0 < len(message_id) <= 256 or status not in _FINAL:
        return None
    errors = item.get("errors")
    first = errors[0] if isinstance(errors, list) and errors and isinstance(errors[0], dict) else {}
    code = first.get("code")
    error = str(code) if isinstance(code, int) and not isinstance(code, bool) else None
    return Status(message_id, _FINAL[str(status)], error if status == "failed" else None)


async def apply(db: Database, found: list[Status], *, now: datetime) -> int:
    """Move the Cloud sender's rows forward; how many rows changed."""
    changed = 0
    async with db.begin() as conn:
        for status in found:
            values: dict[str, Any] = {"status": status.status, "updated_at": now}
            if status.status == "failed":
                values["last_error"] = status.error or "failed"
            result = await conn.execute(
                notify_outbox.update()
                .where(
                    notify_outbox.c.provider_message_id == status.message_id,
                    notify_outbox.c.provider == "cloud",
                    notify_outbox.c.status == "sent",
                )
                .values(**values)
            )
            changed += result.rowcount
    return changed
