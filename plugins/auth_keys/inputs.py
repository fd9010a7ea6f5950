"""auth_keys' own field rules: names, logins, emails, phones, passwords, locales, key scopes and expiry.

The body limit, the form and the one 422 shape are the gateway's (`edge/inputs.py`); this module words its
codes for people (`MESSAGES`) and keeps what a login name, a password or a key's scopes must be.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from edge.errors import GatewayError
from edge.inputs import FieldError, Form, parse_instant
from edge.inputs import invalid as invalid_fields
from edge.inputs import text as text_field
from edge.services import SPEND_PERIODS
from plugins.auth_keys import passwords
from plugins.auth_keys.clock import utcnow
from plugins.auth_keys.phones import normalize_phone

NAME_MAX = 100
LOCALES = ("ar", "en")
SCOPES = ("read", "write", "delete")
DEFAULT_SCOPES = ("read", "write")
# How far ahead an API key may expire (ten years, leap days included); a longer-lived key should be
# rotated anyway, and this keeps every accepted instant far inside both databases' DATETIME range.
KEY_YEARS_MAX = 10
KEY_LIFETIME_MAX = timedelta(days=3653)
# A key's spend limit, in milli-credits: a trillion credits is beyond any account, and far inside BIGINT.
LIMIT_MAX = 10**15

MESSAGES = {
    "name_required": "Enter a name.",
    "name_too_long": f"The name is longer than {NAME_MAX} characters.",
    "email_required": "Enter an email address.",
    "email_invalid": "This is not a valid email address.",
    "email_taken": "An account with this email address already exists.",
    "phone_required": "Enter a phone number.",
    "phone_invalid": "This is not a valid phone number; use the international form, e.g. +965 5xxx xxxx.",
    "phone_taken": "An account with this phone number already exists.",
    "password_required": "Enter a password.",
    "password_too_short": f"The password must have at least {passwords.MIN_LENGTH} characters.",
    "password_too_long": f"The password must have at most {passwords.MAX_LENGTH} characters.",
    "password_incorrect": "The current password is not correct.",
    "password_too_weak": "This password is too easy to guess: it is common, or a simple pattern. Use a longer phrase.",
    "password_personal": "The password must not be or contain your email address or phone number.",
    "locale_invalid": "The language must be `ar` or `en`.",
    "login_required": "Enter your email address or phone number.",
    "invitation_invalid": "`invitation` must be the token from a team invitation's link, or absent.",
    "invitation_not_found": "Team invitations are not enabled here.",
    "scopes_invalid": "Scopes must be a non-empty list of `read`, `write` and `delete`.",
    "expires_at_invalid": "`expires_at` must be an ISO 8601 date and time.",
    "expires_at_past": "`expires_at` must be in the future.",
    "expires_at_too_far": f"`expires_at` must be at most {KEY_YEARS_MAX} years from now.",
    "limit_milli_invalid": "`limit_milli` must be a whole number of milli-credits (1 credit = 1000), or null.",
    "limit_milli_out_of_range": f"`limit_milli` must be from 1 to {LIMIT_MAX:,} milli-credits, or null.",
    "limit_period_invalid": "`limit_period` must be `day`, `month` or `total`.",
    "limit_period_without_limit": "`limit_period` needs a `limit_milli`.",
}

_ATOM = r"[a-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_EMAIL = re.compile(rf"^{_ATOM}(?:\.{_ATOM})*@(?:{_LABEL}\.)+(?:[a-z]{{2,63}}|xn--[a-z0-9-]{{1,59}})$")


def bad(code: str) -> FieldError:
    return FieldError(code, MESSAGES.get(code, "This value is not valid."))


def form(data: Mapping[str, Any]) -> Form:
    """A form whose errors are worded by `MESSAGES`."""
    return Form(data, messages=MESSAGES)


def invalid(fields: Mapping[str, str]) -> GatewayError:
    """The one 422 for codes found after the form was checked (a taken email, a wrong current password)."""
    return invalid_fields({field: bad(code) for field, code in fields.items()})


# A person's or a key's name: `name_required`, `name_too_long`.
name = text_field(subject="name", max_length=NAME_MAX)


def login_key(value: str) -> str:
    """THE normal form of a login name, for registration, lookup and the throttle alike: an email is NFKC,
    case-folded (so `BOB`, `ｂｏｂ` and `boß`/`boss` are one name) and trimmed; anything else is a phone in
    E.164 when it reads as one. Accents are kept, so `bób@…` stays another name, and as the stored names are
    exactly these forms and compared byte for byte, it can never find `bob@…`'s account."""
    text = unicodedata.normalize("NFKC", value).strip()
    if "@" not in text:
        phone_number = normalize_phone(text)
        if phone_number is not None:
            return phone_number
    return unicodedata.normalize("NFKC", text.casefold())


def email(value: Any) -> str:
    if value is None or value == "":
        raise bad("email_required")
    if not isinstance(value, str):
        raise bad("email_invalid")
    text = login_key(value)
    # ASCII only: a look-alike letter from another script must not make a second "admin@...".
    if len(text) > 254 or not text.isascii() or not _EMAIL.match(text) or len(text.split("@")[0]) > 64:
        raise bad("email_invalid")
    return text


def phone(value: Any) -> str:
    if value is None or value == "":
        raise bad("phone_required")
    # The same form `login_key` gives a phone number.
    normalized = normalize_phone(value) if isinstance(value, str) else None
    if normalized is None:
        raise bad("phone_invalid")
    return normalized


def invitation(value: Any) -> str | None:
    """A team invitation's token (the link's last part), checked by the teams plugin; absent: none."""
    if value is None:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= 100:
        raise bad("invitation_invalid")
    return value


def password(value: Any) -> str:
    """A new password, NFKC-normalised so the same characters typed on another keyboard still match."""
    if value is None or value == "":
        raise bad("password_required")
    if not isinstance(value, str):
        raise bad("password_too_short")
    text = unicodedata.normalize("NFKC", value)
    if len(text) < passwords.MIN_LENGTH:
        raise bad("password_too_short")
    if len(text) > passwords.MAX_LENGTH:
        raise bad("password_too_long")
    return text


def given_password(value: Any) -> str:
    """A password offered to be checked: only its presence matters here."""
    if not isinstance(value, str) or value == "":
        raise bad("password_required")
    return unicodedata.normalize("NFKC", value[: passwords.MAX_LENGTH * 4])


def locale(value: Any) -> str:
    if value is None:
        return "ar"
    if not isinstance(value, str) or value.strip().lower() not in LOCALES:
        raise bad("locale_invalid")
    return value.strip().lower()


def login(value: Any) -> str:
    """The login as typed (an email or a phone), in its normal form: see `login_key`."""
    if not isinstance(value, str) or not value.strip():
        raise bad("login_required")
    return login_key(value.strip()[:254])


def expires_at(value: Any) -> datetime | None:
    """An API key's expiry: absent, or an ISO 8601 instant in the future and at most `KEY_LIFETIME_MAX` ahead."""
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 64:
        raise bad("expires_at_invalid")
    try:
        when = parse_instant(value)
    except ValueError:
        raise bad("expires_at_invalid") from None
    now = utcnow()
    if when <= now:
        raise bad("expires_at_past")
    if when > now + KEY_LIFETIME_MAX:
        raise bad("expires_at_too_far")
    return when


def scopes(value: Any) -> tuple[str, ...]:
    if value is None:
        return DEFAULT_SCOPES
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(s, str) and s in SCOPES for s in value):
        raise bad("scopes_invalid")
    return tuple(s for s in SCOPES if s in value)


def limit_milli(value: Any) -> int | None:
    """A key's spend limit: null (none), or a whole number of milli-credits from 1 to LIMIT_MAX (not true,
    not 1.0: JSON's floats and booleans are refused, as are numbers past 64 bits, which decode as floats)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad("limit_milli_invalid")
    if not 1 <= value <= LIMIT_MAX:
        raise bad("limit_milli_out_of_range")
    return value


def limit_period(value: Any) -> str | None:
    """`day`, `month` or `total` (edge.services.SPEND_PERIODS) exactly as spelt, or null."""
    if value is None:
        return None
    if not isinstance(value, str) or value not in SPEND_PERIODS:
        raise bad("limit_period_invalid")
    return value


def key_limit(form: Form, *, current: tuple[int | None, str | None] = (None, None)) -> tuple[int | None, str | None]:
    """(limit_milli, limit_period) from a key's form, starting from the key's `current` pair: a field absent
    keeps its value, `limit_milli: null` removes the limit (and its period), a limit without a period is
    `total` (it never resets, as OpenRouter's), and a period without a limit is refused."""
    data = form.data
    limit, period = current
    if "limit_milli" in data:
        limit = form.take("limit_milli", limit_milli)
        if limit is None:
            period = None
    if "limit_period" in data:
        period = form.take("limit_period", limit_period)
        if period is not None and limit is None and "limit_milli" not in form.errors:
            form.fail("limit_period", "limit_period_without_limit")
    if limit is not None and period is None:
        period = "total"
    return limit, period
