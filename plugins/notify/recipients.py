"""Who gets a notice, in which language, and the outbox rows that say it.

- A user notice goes to the account's owner: the phone and language the event carries, else the accounts
  service's (`ACCOUNTS.account`). No phone, no message (logged): a number is never guessed. An optional
  notice (`credits.low`, `subscription.renewal_due`) is skipped for a user who turned it off. The text is
  both languages, the user's first (Arabic unless they chose English).
- An admin notice goes to every `RESAYIL_ADMIN_PHONES` number (`+96512345678` or `+96512345678:en`) and
  every admin user's own phone (`ACCOUNTS.admins`), once per number (a profile's language wins), each in
  the admin's own language only.

A free-text provider (`log`, `resayil`) sends a user's two languages as one text. A template provider
(`cloud`) cannot (WhatsApp approves a template in one language only: README, "One bilingual text"), so a
user notice becomes two rows, one template message per language, theirs first: the second row names the
first in `after_key` and is not tried before the first is done (outbox.py), and the pair-rate pacing puts
at least `pair_interval_seconds` between them.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import sqlalchemy as sa

from edge.db import Database
from edge.services import Accounts
from edge.settings import ConfigError
from plugins.notify.formats import Language
from plugins.notify.notices import Notice
from plugins.notify.tables import notify_preferences
from plugins.notify.templates import Templates

log = logging.getLogger("resayil.notify")
E164 = re.compile(r"\+[1-9][0-9]{6,14}")
ADMIN_PHONES = "RESAYIL_ADMIN_PHONES"


@dataclass(frozen=True)
class Recipient:
    phone: str
    language: Language


def language(locale: str | None) -> Language:
    return "en" if locale == "en" else "ar"


def admin_phones(raw: str) -> tuple[Recipient, ...]:
    """`RESAYIL_ADMIN_PHONES`, checked: comma-separated E.164 numbers, each optionally `:en` or `:ar`."""
    found: dict[str, Recipient] = {}
    for item in raw.split(","):
        if not item.strip():
            continue
        phone, _, lang = item.strip().partition(":")
        if not E164.fullmatch(phone) or lang not in {"", "ar", "en"}:
            raise ConfigError(f"{ADMIN_PHONES}: {item.strip()[:24]!r} is not an E.164 number such as +96512345678[:en]")
        found.setdefault(phone, Recipient(phone, language(lang or "ar")))
    return tuple(found.values())


async def opted_out(db: Database, *, user_id: int, preference: str) -> bool:
    column = notify_preferences.c[preference]
    async with db.connect() as conn:
        value = await conn.scalar(sa.select(column).where(notify_preferences.c.user_id == user_id))
    return value is not None and not value


class Addressing:
    """Finds a notice's recipients and renders its rows."""

    def __init__(
        self, *, database: Database, templates: Templates, admins: tuple[Recipient, ...], free_text: bool = True
    ) -> None:
        self.db = database
        self.templates = templates
        self.admins = admins
        self.free_text = free_text

    async def rows(
        self, notice: Notice, *, event_id: str, accounts: Accounts | None, now: datetime
    ) -> list[dict[str, Any]]:
        if notice.audience == "admin":
            return [self._row(notice, r, event_id=event_id, now=now) for r in await self._admins(accounts)]
        recipient = await self._owner(notice, accounts)
        if recipient is None:
            return []
        if self.free_text:
            return [self._row(notice, recipient, event_id=event_id, now=now)]
        first = self._row(notice, recipient, event_id=event_id, now=now, language=recipient.language)
        other: Language = "ar" if recipient.language == "en" else "en"
        second = self._row(notice, recipient, event_id=event_id, now=now, language=other)
        return [
            first,
            second | {"dedup_key": notice.dedup_key(f"{recipient.phone}:{other}"), "after_key": first["dedup_key"]},
        ]

    async def _owner(self, notice: Notice, accounts: Accounts | None) -> Recipient | None:
        phone, locale, user_id = notice.phone, notice.locale, notice.user_id
        if (phone is None or user_id is None) and accounts is not None and notice.account_id is not None:
            account = await accounts.account(int(notice.account_id))
            if account is not None:
                phone = phone or account.phone
                locale = locale or account.locale
                user_id = user_id if user_id is not None else account.owner_user_id
        if phone is None or not E164.fullmatch(phone):
            log.warning(
                "a notice has no phone to go to",
                extra={"fields": {"event": notice.event, "account_id": notice.account_id}},
            )
            return None
        optional = notice.optional
        if (
            optional is not None
            and user_id is not None
            and await opted_out(self.db, user_id=user_id, preference=optional)
        ):
            return None
        return Recipient(phone, language(locale))

    async def _admins(self, accounts: Accounts | None) -> list[Recipient]:
        found = {r.phone: r for r in self.admins}
        if accounts is not None:
            for contact in await accounts.admins():
                if E164.fullmatch(contact.phone):
                    found[contact.phone] = Recipient(contact.phone, language(contact.locale))
        return list(found.values())

    def _row(
        self, notice: Notice, recipient: Recipient, *, event_id: str, now: datetime, language: Language | None = None
    ) -> dict[str, Any]:
        """The row of one message; `language` set: that language's text alone (a template provider's)."""
        t, lang = self.templates, language or recipient.language
        if notice.audience == "user" and language is None:
            body = t.user_text(notice.event, lang, notice.values)
        else:
            body = t.render(notice.event, lang, notice.values)
        return {
            "dedup_key": notice.dedup_key(recipient.phone),
            "event_name": notice.event,
            "event_id": event_id,
            "audience": notice.audience,
            "recipient": recipient.phone,
            "language": lang,
            "body": body,
            "params": orjson.dumps(list(t.params(notice.event, lang, notice.values))).decode(),
            "status": "queued",
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
            "updated_at": now,
        }
