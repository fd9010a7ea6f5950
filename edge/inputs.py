"""Portal input: reading an /api JSON body under the one size limit, and checking its fields into the one 422.

Every /api answer to bad fields has one shape, whichever plugin gives it:

    {"error": {"message": ..., "type": "invalid_request_error", "param": <first bad field>,
               "code": <that field's code>, "fields": {<field>: {"code": ..., "message": ...}, ...}}}

`fields` names every bad field at once, so a form can mark them all; codes are stable and machine-read (the
portal translates them), messages are English for people reading raw answers. A body that is not a JSON
object is the same 422 with code `invalid_json` and `fields` empty. A body longer than `api.max_body_bytes`
is 413 `request_too_large`, refused while it is read, so neither a false Content-Length nor a chunked body
makes a worker hold more than the limit.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

import orjson
from starlette.requests import Request

from edge.asgi import too_large
from edge.errors import BadRequest, GatewayError, Unprocessable

T = TypeVar("T")
Parser = Callable[[Any], T]

# Characters that change how text displays without being text: controls, bidirectional overrides and
# isolates, zero-width spaces, word joiners and soft hyphens (so "\u200b" is not a name). The direction marks
# (LRM, RLM, ALM) and the zero-width (non-)joiners stay: mixed Arabic and Latin text, Persian and emoji need them.
_INVISIBLE = re.compile("[\u0000-\u001f\u007f-\u009f\u00ad\u200b\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")
_SPACES = re.compile(r"\s+")
# ASCII digits only: str.isdigit() also says yes to "²" (which int() refuses) and to other scripts' digits.
_DIGITS = re.compile(r"[0-9]{1,19}")
# Longer than any ISO 8601 instant; past it the text is not parsed at all.
_INSTANT_MAX = 64


class FieldError(Exception):
    """One field's problem: a stable `code` for programs and a `message` for people."""

    def __init__(self, code: str, message: str = "This value is not valid.") -> None:
        super().__init__(code)
        self.code = code
        self.message = message


def invalid(fields: Mapping[str, FieldError]) -> GatewayError:
    """THE 422 for bad fields (the module docstring's shape); `fields` is not empty, first field first."""
    first, error = next(iter(fields.items()))
    detail = {name: {"code": e.code, "message": e.message} for name, e in fields.items()}
    return Unprocessable(error.message, code=error.code, param=first, extra={"fields": detail})


class Form:
    """Collects every field's error before answering, so the portal can mark them all at once.

    `messages` (code -> text) lets a plugin word its own codes; a code it does not list keeps the reader's."""

    def __init__(self, data: Mapping[str, Any], *, messages: Mapping[str, str] | None = None) -> None:
        self.data = data
        self.messages = messages or {}
        self.errors: dict[str, FieldError] = {}

    def take(self, field: str, parse: Parser[T]) -> T:
        """`parse(value)` of the field (None when absent); on a FieldError the field is marked and the
        result is None, which is never used: `check` raises first."""
        try:
            return parse(self.data.get(field))
        except FieldError as exc:
            self.fail(field, exc)
            return cast(T, None)

    def fail(self, field: str, error: FieldError | str) -> None:
        """Mark `field` bad (its first error stays); a bare code takes its message from `messages`."""
        if isinstance(error, str):
            error = FieldError(error)
        if error.code in self.messages:
            error = FieldError(error.code, self.messages[error.code])
        self.errors.setdefault(field, error)

    def only(self, allowed: Collection[str]) -> None:
        """Refuse every field not in `allowed` (`field_unknown`), so a misspelt field is not silently ignored."""
        for key in self.data:
            if key not in allowed:
                self.fail(key, FieldError("field_unknown", f"Unknown field; send only {', '.join(allowed)}."))

    def check(self) -> None:
        if self.errors:
            raise invalid(self.errors)


async def read_json(request: Request) -> dict[str, Any]:
    """The body as a JSON object (`{}` when empty), read under the gateway's `api.max_body_bytes`."""
    limit: int = request.app.state.gateway.config.api.max_body_bytes
    return parse_object(await read_body(request, limit=limit))


async def read_body(request: Request, *, limit: int) -> bytes:
    """The raw body, 413 past `limit` bytes: checked before reading when announced, and while reading always."""
    length = request.headers.get("content-length")
    if length is not None:
        if not _DIGITS.fullmatch(length):
            raise BadRequest("The Content-Length header is not a number.", code="invalid_content_length")
        if int(length) > limit:
            raise too_large(limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large(limit)
    return bytes(body)


def parse_object(body: bytes) -> dict[str, Any]:
    """A JSON object from `body`, or 422 `invalid_json` (not JSON, too deep, a lone surrogate, not an object)."""
    if not body.strip():
        return {}
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise not_an_object("The body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise not_an_object("The body must be a JSON object.")
    return data


def not_an_object(message: str) -> GatewayError:
    """The one 422 when there are no fields to name: `invalid_json`, with `fields` empty."""
    return Unprocessable(message, code="invalid_json", extra={"fields": {}})


# ---- typed readers: each returns a parser for `Form.take`, raising `<subject>_<problem>` codes ----------------


def clean_text(value: str) -> str:
    """NFKC, without invisible control and direction characters, single-spaced."""
    text = _INVISIBLE.sub("", unicodedata.normalize("NFKC", value))
    return _SPACES.sub(" ", text).strip()


def text(*, subject: str, max_length: int, min_length: int = 1) -> Parser[str]:
    """Required text, cleaned (`clean_text`), of `min_length`..`max_length` characters after cleaning:
    `_required` when absent, not text or blank, `_too_short`/`_too_long` outside the bounds."""

    def parse(value: Any) -> str:
        cleaned = clean_text(value) if isinstance(value, str) else ""
        if not cleaned:
            raise FieldError(f"{subject}_required", f"`{subject}` is required.")
        if len(cleaned) < min_length:
            raise FieldError(f"{subject}_too_short", f"`{subject}` must have at least {min_length} characters.")
        if len(cleaned) > max_length:
            raise FieldError(f"{subject}_too_long", f"`{subject}` must have at most {max_length} characters.")
        return cleaned

    return parse


def integer(*, subject: str, low: int, high: int) -> Parser[int]:
    """A JSON whole number from `low` to `high`: `_invalid` for anything else, true/false, 1.0 and numbers
    past 64 bits (which JSON decoding turns into floats) included; `_out_of_range` outside the bounds."""

    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise FieldError(f"{subject}_invalid", f"`{subject}` must be a whole number.")
        if not low <= value <= high:
            raise FieldError(f"{subject}_out_of_range", f"`{subject}` must be from {low} to {high}.")
        return value

    return parse


def choice(*, subject: str, options: Collection[str]) -> Parser[str]:
    """One of `options`, exactly as spelt: `_invalid` otherwise (also when absent)."""

    def parse(value: Any) -> str:
        if not isinstance(value, str) or value not in options:
            raise FieldError(f"{subject}_invalid", f"`{subject}` must be one of: {', '.join(options)}.")
        return value

    return parse


def parse_instant(value: str) -> datetime:
    """An ISO 8601 instant as the UTC-naive, whole-second datetime both databases keep; without an offset it
    is taken as UTC. Raises ValueError, also for an offset that carries it past year 1 or 9999."""
    parsed = datetime.fromisoformat(value.strip())
    if parsed.tzinfo is not None:
        try:
            parsed = parsed.astimezone(UTC).replace(tzinfo=None)
        except OverflowError:
            raise ValueError(f"{value!r} is outside the years 1-9999 in UTC") from None
    return parsed.replace(microsecond=0)


def instant(*, subject: str, earliest: datetime, latest: datetime) -> Parser[datetime | None]:
    """An ISO 8601 instant from `earliest` to `latest` (UTC-naive), or None for null/absent: `_invalid`
    for anything else."""

    def parse(value: Any) -> datetime | None:
        if value is None:
            return None
        try:
            moment = parse_instant(value) if isinstance(value, str) and len(value) <= _INSTANT_MAX else None
        except ValueError:
            moment = None
        if moment is None or not earliest <= moment <= latest:
            raise FieldError(
                f"{subject}_invalid",
                f"`{subject}` must be an ISO 8601 date and time from {earliest.isoformat()} to {latest.isoformat()}.",
            )
        return moment

    return parse


def query_value(query: Mapping[str, str], name: str) -> str | None:
    """A query-string parameter, None when absent or empty."""
    value = query.get(name)
    return value if value not in (None, "") else None


def query_form(query: Mapping[str, str], *, allowed: Collection[str], repeated: Collection[str]) -> Form:
    """A Form over a query string that already refuses unknown parameters (`field_unknown`) and each allowed
    one given more than once (`<name>_repeated`): a filter must mean one thing."""
    form = Form(query)
    form.only(allowed)
    for name in sorted(set(repeated) & set(allowed)):
        form.fail(name, FieldError(f"{name}_repeated", f"Give `{name}` at most once."))
    return form


def query_page(form: Form, query: Mapping[str, str], *, max_page: int) -> tuple[int | None, int]:
    """(cursor, limit) of a keyset-paged list: `cursor` the next_cursor of a previous page (a whole
    number in 64 bits), `limit` 1 to `max_page` (50 when absent); a bad one is marked on `form`."""
    cursor = None
    if (raw := query_value(query, "cursor")) is not None:
        cursor = query_number(raw, top=2**63 - 1)
        if cursor is None:
            form.fail("cursor", FieldError("cursor_invalid", "Must be the next_cursor of a previous page."))
    limit = 50
    if (raw := query_value(query, "limit")) is not None:
        limit = query_number(raw, top=max_page) or 0
        if limit < 1:
            form.fail("limit", FieldError("limit_invalid", f"Must be a whole number from 1 to {max_page}."))
    return cursor, limit


def query_number(raw: str | None, *, top: int) -> int | None:
    """A query-string whole number from 0 to `top` in ASCII digits, else None (also when absent)."""
    value = int(raw) if raw is not None and _DIGITS.fullmatch(raw) else None
    return value if value is not None and value <= top else None


def page_args(query: Mapping[str, str], *, default: int, max_page: int) -> tuple[int, int | None]:
    """(limit, cursor) of a keyset-paged list from a query string, or the one 422 naming the bad ones:
    `limit` 1 to `max_page` (`default` when absent; given empty, it is refused), `cursor` the next_cursor
    of a previous page (a whole number in 64 bits; absent or empty, the first page)."""
    form = Form(query)
    limit = default
    if (raw := query.get("limit")) is not None:
        limit = query_number(raw, top=max_page) or 0
        if limit < 1:
            form.fail("limit", FieldError("limit_invalid", f"Must be a whole number from 1 to {max_page}."))
    cursor = None
    if raw := query.get("cursor"):
        cursor = query_number(raw, top=2**63 - 1)
        if cursor is None:
            form.fail("cursor", FieldError("cursor_invalid", "Must be the next_cursor of a previous page."))
    form.check()
    return limit, cursor
