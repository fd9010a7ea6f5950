"""Team keys as the accounts service hands them to the teams plugin: list, revoke, set a spend limit.

A team key is a key on an account made by a user whose own account (`users.account_id`) is another one: a
team member's key on the team's account. The account's own users' keys (and keys made by the CLI, with no
user) are never team keys, so nothing here reaches them; each statement repeats that condition, and the
account's id, in its WHERE.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from edge.services import KeyChange, KeySummary
from plugins.auth_keys import inputs
from plugins.auth_keys.clock import utcnow
from plugins.auth_keys.keys import KEY_COLUMNS
from plugins.auth_keys.tables import api_keys, users

MAX_ID = 2**63 - 1
# The member's own account is not the key's: the key bills a team they are in.
_MEMBER_OWN = sa.select(users.c.id).where(users.c.id == api_keys.c.user_id, users.c.account_id != api_keys.c.account_id)


def _team_key(*, account_id: int, user_id: int | None) -> sa.ColumnElement[bool]:
    """The account's team keys (only `user_id`'s when given)."""
    wanted = [api_keys.c.account_id == account_id, _MEMBER_OWN.exists()]
    if user_id is not None:
        wanted.append(api_keys.c.user_id == user_id)
    return sa.and_(*wanted)


def summary(row: Any) -> KeySummary:
    return KeySummary(**dict(row._mapping) | {"scopes": tuple(row.scopes.split(","))})


_SUMMARY = sa.select(*KEY_COLUMNS, api_keys.c.user_id)


async def listing(
    conn: AsyncConnection, *, account_id: int, user_id: int | None, before_id: int | None, limit: int
) -> list[KeySummary]:
    query = _SUMMARY.where(_team_key(account_id=account_id, user_id=user_id))
    if before_id is not None:
        query = query.where(api_keys.c.id < before_id)
    rows = (await conn.execute(query.order_by(api_keys.c.id.desc()).limit(max(1, limit)))).all()
    return [summary(row) for row in rows]


async def one(conn: AsyncConnection, *, account_id: int, key_id: int, user_id: int | None) -> KeySummary | None:
    if not 0 < key_id <= MAX_ID:
        return None
    query = _SUMMARY.where(api_keys.c.id == key_id, _team_key(account_id=account_id, user_id=user_id))
    row = (await conn.execute(query)).first()
    return None if row is None else summary(row)


async def _locked(conn: AsyncConnection, *, account_id: int, key_id: int, user_id: int | None) -> KeySummary | None:
    """The team key, its row locked until the transaction ends, so two changes of one key take turns and
    each reads what the other left. The lock is taken by a write that changes nothing: SQLite's driver starts
    the transaction (and takes the write lock) only at a write, and MariaDB locks the row it updates."""
    if not 0 < key_id <= MAX_ID:
        return None
    mine = sa.and_(api_keys.c.id == key_id, _team_key(account_id=account_id, user_id=user_id))
    await conn.execute(sa.update(api_keys).where(mine).values(limit_milli=api_keys.c.limit_milli))
    return await one(conn, account_id=account_id, key_id=key_id, user_id=user_id)


async def revoke(conn: AsyncConnection, *, account_id: int, key_id: int, user_id: int | None) -> KeyChange | None:
    """Revoke the team key (idempotent: a revoked key keeps its first `revoked_at`); None when the account
    has no such team key (of `user_id`, when given)."""
    before = await _locked(conn, account_id=account_id, key_id=key_id, user_id=user_id)
    if before is None:
        return None
    if before.revoked_at is None:
        await conn.execute(sa.update(api_keys).where(api_keys.c.id == key_id).values(revoked_at=utcnow()))
    after = await one(conn, account_id=account_id, key_id=key_id, user_id=user_id)
    assert after is not None
    return KeyChange(before=before, after=after)


async def set_limit(
    conn: AsyncConnection, *, account_id: int, key_id: int, fields: Mapping[str, Any]
) -> KeyChange | None:
    """Apply `limit_milli`/`limit_period` from `fields` exactly as PATCH /api/keys does (the same rules and
    the same 422); None when the account has no such team key."""
    before = await _locked(conn, account_id=account_id, key_id=key_id, user_id=None)
    if before is None:
        return None
    form = inputs.form(fields)
    form.only(("limit_milli", "limit_period"))
    limit_milli, limit_period = inputs.key_limit(form, current=(before.limit_milli, before.limit_period))
    form.check()
    limited = {"limit_milli": limit_milli, "limit_period": limit_period}
    await conn.execute(sa.update(api_keys).where(api_keys.c.id == key_id).values(**limited))
    after = await one(conn, account_id=account_id, key_id=key_id, user_id=None)
    assert after is not None
    return KeyChange(before=before, after=after)
