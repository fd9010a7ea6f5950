"""The admins' query strings, checked into the one 422 (edge/inputs.py) before any query runs.

Every parameter is given at most once, unknown ones are refused (a misspelt filter must not silently list
everyone), numbers are ASCII digits in range, and text is bounded and limited to the characters its column
can hold: an audit action or target outside them cannot match a row, so it is a 422, not an empty page.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime

from edge.inputs import FieldError, clean_text, instant, query_form, query_number, query_page, query_value
from edge.services import USER_STATUSES, UserQuery

MAX_PAGE = 100
BIGINT_MAX = 2**63 - 1
MAX_QUERY = 100
EARLIEST = datetime(2000, 1, 1)
LATEST = datetime(9999, 12, 31, 23, 59, 59)
# An action ("billing.refund") or, without a dot, every action of one plugin ("billing").
_ACTION = re.compile(r"^[a-z][a-z0-9_]{0,31}(\.[a-z0-9_]{1,32}){0,3}$")
_TARGET = re.compile(r"^[A-Za-z0-9_.:@+-]{1,128}$")
_TIER = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


@dataclass(frozen=True, slots=True)
class AuditFilter:
    actor: int | None = None
    target: str | None = None
    action: str | None = None
    cursor: int | None = None
    limit: int = 50


@dataclass(frozen=True, slots=True)
class UsageRange:
    since: datetime | None
    until: datetime | None


def audit_filter(query: Mapping[str, str], *, repeated: Collection[str]) -> AuditFilter:
    """`actor` (a user id), `target` ("user:42"), `action` ("billing.refund", or "billing" for all of
    that plugin's), `cursor`, `limit`; or the one 422 naming every bad parameter."""
    form = query_form(query, allowed=("actor", "target", "action", "cursor", "limit"), repeated=repeated)
    actor = None
    if (raw := query_value(query, "actor")) is not None:
        actor = query_number(raw, top=BIGINT_MAX)
        if not actor:
            form.fail("actor", FieldError("actor_invalid", "`actor` must be a user id."))
    target = query_value(query, "target")
    if target is not None and not _TARGET.match(target):
        form.fail("target", FieldError("target_invalid", "`target` must look like `user:42` or `order:ord_…`."))
    action = query_value(query, "action")
    if action is not None and not _ACTION.match(action):
        form.fail("action", FieldError("action_invalid", "`action` must look like `billing.refund` or `billing`."))
    cursor, limit = query_page(form, query, max_page=MAX_PAGE)
    form.check()
    return AuditFilter(actor, target, action, cursor, limit)


def user_query(
    query: Mapping[str, str], *, repeated: Collection[str], tiers: Collection[str], paged: bool = True
) -> UserQuery:
    """`query` (text in the email, phone or name), `tier`, `status` (active, banned), and with `paged`
    `cursor` and `limit`; or the one 422."""
    names = ("query", "tier", "status", *(("cursor", "limit") if paged else ()))
    form = query_form(query, allowed=names, repeated=repeated)
    text = None
    if (raw := query.get("query")) is not None:
        text = clean_text(raw[: MAX_QUERY * 4]) or None
        if text is not None and len(text) > MAX_QUERY:
            form.fail("query", FieldError("query_too_long", f"Search for at most {MAX_QUERY} characters."))
    tier = query_value(query, "tier")
    if tier is not None and (not _TIER.match(tier) or (tiers and tier not in tiers)):
        form.fail("tier", FieldError("tier_invalid", f"`tier` must be one of: {', '.join(tiers)}."))
    status = query_value(query, "status")
    if status is not None and status not in USER_STATUSES:
        form.fail("status", FieldError("status_invalid", f"`status` must be one of: {', '.join(USER_STATUSES)}."))
    cursor, limit = query_page(form, query, max_page=MAX_PAGE) if paged else (None, 50)
    form.check()
    return UserQuery(query=text, tier=tier, status=status, before_id=cursor, limit=limit)


def usage_range(query: Mapping[str, str], *, repeated: Collection[str]) -> UsageRange:
    """`from` (inclusive) and `to` (exclusive), ISO 8601 instants, both optional; `to` not before `from`."""
    form = query_form(query, allowed=("from", "to"), repeated=repeated)
    bounds = instant(subject="from", earliest=EARLIEST, latest=LATEST)
    since = form.take("from", bounds) if query_value(query, "from") else None
    until = (
        form.take("to", instant(subject="to", earliest=EARLIEST, latest=LATEST)) if query_value(query, "to") else None
    )
    if since is not None and until is not None and since > until:
        form.fail("to", FieldError("to_before_from", "`to` must not be before `from`."))
    form.check()
    return UsageRange(since, until)


def user_id(raw: str) -> int | None:
    """A path's user id, or None (then the answer is the same 404 as for a missing user)."""
    value = query_number(raw, top=BIGINT_MAX)
    return value or None
