"""Everything an admin's client sees, as pure functions: the JSON of users, keys, usage, ledger, orders and
audit rows, and CSV lines. Times are ISO 8601 in UTC; money is integer milli-credits and fils. A key's
secret or hash never appears: the key summary the accounts service gives has neither.

CSV cells are written for spreadsheets: text starting with `=`, `+`, `-`, `@`, a tab or a carriage
return is prefixed with `'`, so a user named `=HYPERLINK(...)` is shown, not run (OWASP's CSV injection).
An E.164 phone (`+965…`) is only digits after its plus and is left as it is.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from edge.services import KeySummary, LedgerEntry, OrderSummary, UsageItem, UserProfile

_FORMULA = ("=", "+", "-", "@", "\t", "\r")
_PHONE = re.compile(r"^\+[0-9]{6,15}$")

USER_COLUMNS = (
    "id",
    "account_id",
    "name",
    "email",
    "phone",
    "role",
    "locale",
    "tier",
    "plan_expires_at",
    "created_at",
    "banned_at",
)
USAGE_COLUMNS = (
    "id",
    "created_at",
    "request_id",
    "account_id",
    "user_id",
    "key_id",
    "model",
    "endpoint",
    "route",
    "prompt_tokens",
    "completion_tokens",
    "cost_milli",
    "status",
    "outcome",
)


def iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.replace(tzinfo=UTC).isoformat().replace("+00:00", "Z")


def user_json(user: UserProfile) -> dict[str, Any]:
    return {
        "id": user.user_id,
        "account_id": user.account_id,
        "name": user.name,
        "email": user.email,
        "phone": user.phone,
        "role": user.role,
        "locale": user.locale,
        "tier": user.tier,
        "plan_expires_at": iso(user.plan_expires_at),
        "created_at": iso(user.created_at),
        "banned": user.banned_at is not None,
        "banned_at": iso(user.banned_at),
    }


def key_json(key: KeySummary) -> dict[str, Any]:
    return {
        "id": key.id,
        "user_id": key.user_id,
        "name": key.name,
        "prefix": key.prefix,
        "scopes": list(key.scopes),
        "created_at": iso(key.created_at),
        "expires_at": iso(key.expires_at),
        "last_used_at": iso(key.last_used_at),
        "revoked_at": iso(key.revoked_at),
        "limit_milli": key.limit_milli,
        "limit_period": key.limit_period,
    }


def usage_json(item: UsageItem) -> dict[str, Any]:
    return {name: getattr(item, name) for name in USAGE_COLUMNS} | {"created_at": iso(item.created_at)}


def ledger_json(entry: LedgerEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "kind": entry.kind,
        "amount_milli": entry.amount_milli,
        "balance_after_milli": entry.balance_after_milli,
        "reference": entry.reference,
        "actor": entry.actor,
        "reason": entry.reason,
        "created_at": iso(entry.created_at),
    }


def order_json(order: OrderSummary) -> dict[str, Any]:
    return {
        "id": order.reference,
        "product": order.product_id,
        "status": order.status,
        "price_fils": order.price_fils,
        "currency": order.currency,
        "created_at": iso(order.created_at),
        "paid_at": iso(order.paid_at),
    }


def audit_json(row: Any) -> dict[str, Any]:
    return {
        "id": int(row.id),
        "at": iso(row.at),
        "actor_user_id": None if row.actor_user_id is None else int(row.actor_user_id),
        "action": row.action,
        "target": row.target,
        "reason": row.reason,
        "ip": row.ip,
        "details": orjson.loads(row.details),
    }


def cell(value: Any) -> str:
    """One CSV cell: None empty, datetimes ISO, formula-like text defused."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return iso(value) or ""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if text.startswith(_FORMULA) and not _PHONE.match(text):
        return "'" + text
    return text


def csv_lines(rows: Iterable[Sequence[Any]]) -> str:
    """The rows as CSV text (RFC 4180 quoting, CRLF line ends)."""
    out = io.StringIO()
    writer = csv.writer(out)
    for row in rows:
        writer.writerow([cell(v) for v in row])
    return out.getvalue()


def user_row(user: UserProfile) -> tuple[Any, ...]:
    return (
        user.user_id,
        user.account_id,
        user.name,
        user.email,
        user.phone,
        user.role,
        user.locale,
        user.tier,
        user.plan_expires_at,
        user.created_at,
        user.banned_at,
    )


def usage_row(item: UsageItem) -> tuple[Any, ...]:
    return tuple(getattr(item, name) for name in USAGE_COLUMNS)
