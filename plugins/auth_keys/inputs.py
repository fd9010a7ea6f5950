"""Reading portal JSON bodies and checking their fields into clean values or stable machine codes.

A 422 names every bad field: `{"error": {..., "code": <first field's code>, "fields": {field: code}}}`.
The portal translates the codes; the English messages are for people reading raw responses.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar, cast

import orjson
from starlette.requests import Request

from edge.asgi import too_large
from edge.errors import BadRequest, GatewayError
from plugins.auth_keys import passwords
from plugins.auth_keys.clock import parse_iso, utcnow
from plugins.auth_keys.phones import normalize_phone

T = TypeVar("T")

NAME_MAX = 100
LOCALES = ("ar", "en")
SCOPES = ("read", "write", "delete")
DEFAULT_SCOPES = ("read", "write")
# How far ahead an API key may expire (ten years, leap days included); a longer-lived key should be
# rotated anyway, and this keeps every accepted instant far inside both databases' DATETIME range.
KEY_YEARS_MAX = 10
KEY_LIFETIME_MAX = timedelta(days=3653)

MESSAGES = {
    "invalid_json": "The body must be a JSON object.",
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
    "scopes_invalid": "Scopes must be a non-empty list of `read`, `write` and `delete`.",
    "expires_at_invalid": "`expires_at` must be an ISO 8601 date and time.",
    "expires_at_past": "`expires_at` must be in the future.",
    "expires_at_too_far": f"`expires_at` must be at most {KEY_YEARS_MAX} years from now.",
}

# Characters that change how text displays without being text: controls and bidirectional overrides.
_INVISIBLE = re.compile("[\u0000-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069\ufeff]")
_SPACES = re.compile(r"\s+")
_ATOM = r"[a-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_EMAIL = re.compile(rf"^{_ATOM}(?:\.{_ATOM})*@(?:{_LABEL}\.)+(?:[a-z]{{2,63}}|xn--[a-z0-9-]{{1,59}})$")


class FieldError(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def invalid(fields: dict[str, str]) -> GatewayError:
    """The one 422 shape for bad fields."""
    field, code = next(iter(fields.items()))
    return GatewayError(
        MESSAGES.get(code, "A field is not valid."), status=422, code=code, param=field, extra={"fields": dict(fields)}
    )


class Form:
    """Collects every field's error before answering, so the portal can mark them all at once."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.errors: dict[str, str] = {}

    def take(self, field: str, parse: Callable[[Any], T]) -> T:
        try:
            return parse(self.data.get(field))
        except FieldError as exc:
            self.errors.setdefault(field, exc.code)
            return cast(T, None)  # never used: `check` raises first

    def fail(self, field: str, code: str) -> None:
        self.errors.setdefault(field, code)

    def check(self) -> None:
        if self.errors:
            raise invalid(self.errors)


async def read_json(request: Request, *, limit: int) -> dict[str, Any]:
    """The body as a JSON object; 413 past `limit` bytes (checked before reading when announced)."""
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise BadRequest("The Content-Length header is not a number.", code="invalid_content_length")
        if int(length) > limit:
            raise too_large(limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large(limit)
    if not body.strip():
        return {}
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise GatewayError("The body is not valid JSON.", status=422, code="invalid_json") from None
    if not isinstance(data, dict):
        raise GatewayError(MESSAGES["invalid_json"], status=422, code="invalid_json")
    return data


def clean_text(value: str) -> str:
    """NFKC, without invisible control and direction characters, single-spaced."""
    text = _INVISIBLE.sub("", unicodedata.normalize("NFKC", value))
    return _SPACES.sub(" ", text).strip()


def name(value: Any) -> str:
    if not isinstance(value, str) or not clean_text(value):
        raise FieldError("name_required")
    text = clean_text(value)
    if len(text) > NAME_MAX:
        raise FieldError("name_too_long")
    return text


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
        raise FieldError("email_required")
    if not isinstance(value, str):
        raise FieldError("email_invalid")
    text = login_key(value)
    # ASCII only: a look-alike letter from another script must not make a second "admin@...".
    if len(text) > 254 or not text.isascii() or not _EMAIL.match(text) or len(text.split("@")[0]) > 64:
        raise FieldError("email_invalid")
    return text


def phone(value: Any) -> str:
    if value is None or value == "":
        raise FieldError("phone_required")
    # The same form `login_key` gives a phone number.
    normalized = normalize_phone(value) if isinstance(value, str) else None
    if normalized is None:
        raise FieldError("phone_invalid")
    return normalized


def password(value: Any) -> str:
    """A new password, NFKC-normalised so the same characters typed on another keyboard still match."""
    if value is None or value == "":
        raise FieldError("password_required")
    if not isinstance(value, str):
        raise FieldError("password_too_short")
    text = unicodedata.normalize("NFKC", value)
    if len(text) < passwords.MIN_LENGTH:
        raise FieldError("password_too_short")
    if len(text) > passwords.MAX_LENGTH:
        raise FieldError("password_too_long")
    return text


def given_password(value: Any) -> str:
    """A password offered to be checked: only its presence matters here."""
    if not isinstance(value, str) or value == "":
        raise FieldError("password_required")
    return unicodedata.normalize("NFKC", value[: passwords.MAX_LENGTH * 4])


def locale(value: Any) -> str:
    if value is None:
        return "ar"
    if not isinstance(value, str) or value.strip().lower() not in LOCALES:
        raise FieldError("locale_invalid")
    return value.strip().lower()


def login(value: Any) -> str:
    """The login as typed (an email or a phone), in its normal form: see `login_key`."""
    if not isinstance(value, str) or not value.strip():
        raise FieldError("login_required")
    return login_key(value.strip()[:254])


def expires_at(value: Any) -> datetime | None:
    """An API key's expiry: absent, or an ISO 8601 instant in the future and at most `KEY_LIFETIME_MAX` ahead."""
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 64:
        raise FieldError("expires_at_invalid")
    try:
        when = parse_iso(value)
    except ValueError:
        raise FieldError("expires_at_invalid") from None
    now = utcnow()
    if when <= now:
        raise FieldError("expires_at_past")
    if when > now + KEY_LIFETIME_MAX:
        raise FieldError("expires_at_too_far")
    return when


def scopes(value: Any) -> tuple[str, ...]:
    if value is None:
        return DEFAULT_SCOPES
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(s, str) and s in SCOPES for s in value):
        raise FieldError("scopes_invalid")
    return tuple(s for s in SCOPES if s in value)
