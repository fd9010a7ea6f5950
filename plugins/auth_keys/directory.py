"""What admins read and change of users through the accounts service: search, one user, keys, bans.

A search matches its text as text: `%`, `_` and the escape character itself are escaped before the LIKE,
so `query=%` finds emails with a percent sign, not everyone. A ban sets `users.banned_at` and deletes the
user's sessions in one transaction; the login route, the session loader and the key lookup all refuse a
banned user (and a key without a user on the banned user's own account), and the invalidations sent once
the ban commits make every worker drop those cached keys.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from edge.services import KeySummary, UserProfile, UserQuery
from plugins.auth_keys.clock import utcnow
from plugins.auth_keys.keys import KEY_COLUMNS
from plugins.auth_keys.tables import accounts, api_keys, sessions, users
from plugins.auth_keys.users import PROFILE_COLUMNS

MAX_ID = 2**63 - 1
_ESCAPE = "!"

_PROFILE = sa.select(*PROFILE_COLUMNS, users.c.banned_at).select_from(
    users.join(accounts, accounts.c.id == users.c.account_id)
)


def like_pattern(text: str) -> str:
    """`%text%` with LIKE's wildcards in `text` escaped (by `_ESCAPE`)."""
    escaped = text.replace(_ESCAPE, _ESCAPE * 2).replace("%", _ESCAPE + "%").replace("_", _ESCAPE + "_")
    return f"%{escaped}%"


def profile(row: Any) -> UserProfile:
    found = dict(row._mapping)
    user_id = found.pop("id")
    return UserProfile(user_id=user_id, **found | {"locale": found["locale"] or "ar"})


async def search(conn: AsyncConnection, wanted: UserQuery) -> list[UserProfile]:
    query = _PROFILE
    if wanted.query:
        pattern = like_pattern(wanted.query)
        query = query.where(
            sa.or_(*(c.like(pattern, escape=_ESCAPE) for c in (users.c.email, users.c.phone, users.c.name)))
        )
    if wanted.tier is not None:
        query = query.where(accounts.c.tier == wanted.tier)
    if wanted.status == "banned":
        query = query.where(users.c.banned_at.is_not(None))
    elif wanted.status == "active":
        query = query.where(users.c.banned_at.is_(None))
    if wanted.before_id is not None:
        query = query.where(users.c.id < wanted.before_id)
    query = query.order_by(users.c.id.desc()).limit(max(1, wanted.limit))
    return [profile(row) for row in (await conn.execute(query)).all()]


async def one(conn: AsyncConnection, user_id: int) -> UserProfile | None:
    if not 0 < user_id <= MAX_ID:
        return None
    row = (await conn.execute(_PROFILE.where(users.c.id == user_id))).first()
    return None if row is None else profile(row)


async def many(conn: AsyncConnection, user_ids: list[int]) -> list[UserProfile]:
    """The users among `user_ids` (ids already in range, a bounded batch)."""
    if not user_ids:
        return []
    return [profile(row) for row in (await conn.execute(_PROFILE.where(users.c.id.in_(user_ids)))).all()]


async def keys(conn: AsyncConnection, *, account_id: int) -> list[KeySummary]:
    query = sa.select(*KEY_COLUMNS, api_keys.c.user_id).where(api_keys.c.account_id == account_id)
    rows = (await conn.execute(query.order_by(api_keys.c.id.desc()))).all()
    return [KeySummary(**dict(r._mapping) | {"scopes": tuple(r.scopes.split(","))}) for r in rows]


async def set_banned(conn: AsyncConnection, *, user_id: int, banned: bool, now: datetime | None = None) -> bool:
    """Ban (ending every session) or unban the user; whether there is such a user."""
    if not 0 < user_id <= MAX_ID:
        return False
    if banned:
        when = now or utcnow()
        await conn.execute(
            sa.update(users).where(users.c.id == user_id, users.c.banned_at.is_(None)).values(banned_at=when)
        )
        await conn.execute(sa.delete(sessions).where(sessions.c.user_id == user_id))
    else:
        await conn.execute(sa.update(users).where(users.c.id == user_id).values(banned_at=None))
    found = await conn.scalar(sa.select(users.c.id).where(users.c.id == user_id))
    return found is not None
