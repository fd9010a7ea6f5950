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
from dataclasses import fields
from datetime import UTC, datetime
from typing import Any

import orjson

from edge.services import TeamStanding, UsageItem, UserProfile

_FORMULA = ("=", "+", "-", "@", "\t", "\r")
_PHONE = re.compile(r"^\+[0-9]{6,15}$")

USER_COLUMNS = tuple(f.name for f in fields(UserProfile))
USAGE_COLUMNS = tuple(f.name for f in fields(UsageItem))


def iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.replace(tzinfo=UTC).isoformat().replace("+00:00", "Z")


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    return list(value) if isinstance(value, tuple) else value


def plain(record: Any) -> dict[str, Any]:
    """A service's frozen dataclass as JSON: its fields by name, times ISO 8601 in UTC, tuples as lists."""
    return {f.name: _json_value(getattr(record, f.name)) for f in fields(record)}


def user_json(user: UserProfile) -> dict[str, Any]:
    return plain(user) | {"banned": user.banned_at is not None}


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


def values(record: Any) -> tuple[Any, ...]:
    """A dataclass's field values in field order: one CSV row."""
    return tuple(getattr(record, f.name) for f in fields(record))


def ban_team(team: TeamStanding) -> dict[str, Any]:
    """What banning a user means for the team they are in (the ban answer's `team`): their own keys stop
    with them; the other members' keys keep working and keep billing the team's account; the team's other
    managers keep managing it. The levers to stop the whole team are named."""
    others = team.other_members
    if team.role == "owner":
        effect = (
            f"The owner's own keys stop. The team's {others} other member(s) keep their keys, which still bill "
            f"account {team.account_id}; its {team.other_managers} other admin(s) can still manage members, but "
            "nobody can move the ownership while the owner is banned. To stop the team's spending too, move "
            "the account below Enterprise (members' keys then answer 403 team_requires_enterprise) or ban "
            "its members."
        )
    else:
        effect = (
            f"This {team.role}'s keys on account {team.account_id} stop; the team's {others} other member(s) "
            "and their keys are unchanged."
        )
    return {
        "account_id": team.account_id,
        "role": team.role,
        "other_members": others,
        "other_managers": team.other_managers,
        "members_keys": "keep_working",
        "effect": effect,
    }
