"""What admins read and change of users through the accounts service: search, one user, keys, bans.

A search matches its text as text: `%`, `_` and the escape character itself are escaped before the LIKE,
so `query=%` finds emails with a percent sign, not everyone. A ban sets `users.banned_at` and deletes the
user's sessions in one transaction; the login route, the session loader and the key lookup all refuse a
banned user, and the invalidation sent once the ban commits makes every worker drop the user's cached keys.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from edge.services import KeySummary, UserProfile, UserQuery
from plugins.auth_keys.clock import utcnow
from plugins.auth_keys.tables import accounts, api_keys, sessions, users

MAX_ID = 2**63 - 1
_ESCAPE = "!"

_PROFILE = sa.select(
    users.c.id,
    users.c.account_id,
    users.c.name,
    users.c.email,
    users.c.phone,
    users.c.role,
    users.c.locale,
    users.c.created_at,
    users.c.banned_at,
    accounts.c.tier,
    accounts.c.plan_expires_at,
).select_from(users.join(accounts, accounts.c.id == users.c.account_id))


def like_pattern(text: str) -> str:
    """`%text%` with LIKE's wildcards in `text` escaped (by `_ESCAPE`)."""
    escaped = text.replace(_ESCAPE, _ESCAPE * 2).replace("%", _ESCAPE + "%").replace("_", _ESCAPE + "_")
    return f"%{escaped}%"


def profile(row: Any) -> UserProfile:
    return UserProfile(
        user_id=int(row.id),
        account_id=int(row.account_id),
        name=row.name,
        email=row.email,
        phone=row.phone,
        role=row.role,
        locale=row.locale or "ar",
        created_at=row.created_at,
        banned_at=row.banned_at,
        tier=row.tier,
        plan_expires_at=row.plan_expires_at,
    )


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


async def keys(conn: AsyncConnection, *, account_id: int) -> list[KeySummary]:
    query = sa.select(
        api_keys.c.id,
        api_keys.c.user_id,
        api_keys.c.name,
        api_keys.c.prefix,
        api_keys.c.scopes,
        api_keys.c.created_at,
        api_keys.c.expires_at,
        api_keys.c.last_used_at,
        api_keys.c.revoked_at,
        api_keys.c.limit_milli,
        api_keys.c.limit_period,
    ).where(api_keys.c.account_id == account_id)
    rows = (await conn.execute(query.order_by(api_keys.c.id.desc()))).all()
    return [
        KeySummary(
            id=int(r.id),
            user_id=None if r.user_id is None else int(r.user_id),
            name=r.name,
            prefix=r.prefix,
            scopes=tuple(r.scopes.split(",")),
            created_at=r.created_at,
            expires_at=r.expires_at,
            last_used_at=r.last_used_at,
            revoked_at=r.revoked_at,
            limit_milli=r.limit_milli,
            limit_period=r.limit_period,
        )
        for r in rows
    ]


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
