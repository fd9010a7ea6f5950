"""The audit trail: one append-only `audit_log` row for every admin action, whichever plugin takes it.

`await audit.record(conn, actor_user_id=..., action=..., target=..., reason=..., ip=..., details={...})`
(or, from an admin route, `await audit.Actor.of(admin, request).record(conn, action, target, reason=..., details=...)`)
writes the row in the caller's transaction, so the trail says exactly what was committed: an action that
rolls back leaves no row, and one that commits cannot lose its row to a crash in between. Rows are only
ever inserted; nothing in the code updates or deletes them, and the database refuses to (triggers from the
migration core_0003, on SQLite and MariaDB). Which admin route writes which row: plugins/admin/README.md.

A row says who (`actor_user_id`, the admin's user id), what (`action`, "<plugin>.<verb>" such as
`billing.refund`, and `details`, a small JSON object), when (`at`, UTC), why (`reason`, the admin's own
words), to what (`target`, "<noun>:<id>" such as `order:ord_…` or `account:42`) and from where (`ip`, the
client's address as the gateway saw it behind its trusted proxies).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.requests import Request

metadata = sa.MetaData()
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Moment = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql")

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("at", Moment, nullable=False),
    sa.Column("actor_user_id", sa.BigInteger(), nullable=True),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("target", sa.String(128), nullable=False),
    sa.Column("reason", sa.String(500), nullable=True),
    sa.Column("ip", sa.String(45), nullable=True),
    # A JSON object: what the action changed (amounts, before and after), never secrets.
    sa.Column("details", sa.Text(), nullable=False),
    sa.Index("ix_audit_log_target", "target", "id"),
    sa.Index("ix_audit_log_actor", "actor_user_id", "id"),
    sa.Index("ix_audit_log_at", "at"),
)

_ACTION = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$")
MAX_DETAILS = 8000


def request_ip(request: Request) -> str | None:
    """The client's address (the edge already replaced a trusted proxy's with the one it forwarded for)."""
    client = request.client
    return client.host[:45] if client is not None else None


class _User(Protocol):
    @property
    def user_id(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Actor:
    """The admin taking an action and where from: what every audit row of an admin route says besides the action."""

    user_id: int
    ip: str | None

    @classmethod
    def of(cls, admin: _User, request: Request) -> Actor:
        """The logged-in admin of `request` (any object with a `user_id`, such as a PortalUser) and its client."""
        return cls(user_id=admin.user_id, ip=request_ip(request))

    async def record(
        self,
        conn: AsyncConnection,
        action: str,
        target: str,
        *,
        reason: str | None,
        details: dict[str, Any] | None = None,
    ) -> int:
        """`record` one row of this actor's, in the transaction `conn` is in; its id."""
        return await record(
            conn, actor_user_id=self.user_id, action=action, target=target, reason=reason, ip=self.ip, details=details
        )


async def record(
    conn: AsyncConnection,
    *,
    actor_user_id: int | None,
    action: str,
    target: str,
    reason: str | None,
    ip: str | None,
    details: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> int:
    """Append one audit row in the transaction `conn` is in; its id. ValueError for an action not named
    like "billing.refund", an empty target, or details that do not fit (they are the caller's, not the
    user's: a bug, not a 422)."""
    if not _ACTION.match(action) or len(action) > 64:
        raise ValueError(f"audit action {action!r} is not like 'plugin.verb'")
    if not target or len(target) > 128:
        raise ValueError("an audit target is 1 to 128 characters")
    text = orjson.dumps(details or {}, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS).decode()
    if len(text) > MAX_DETAILS:
        raise ValueError(f"audit details are larger than {MAX_DETAILS} characters")
    result = await conn.execute(
        audit_log.insert().values(
            at=at or datetime.now(UTC).replace(tzinfo=None),
            actor_user_id=actor_user_id,
            action=action,
            target=target,
            reason=None if reason is None else reason[:500],
            ip=None if ip is None else ip[:45],
            details=text,
        )
    )
    key = result.inserted_primary_key
    return int(key[0]) if key else 0
