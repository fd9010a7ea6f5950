"""The platform's user and subscription counts for the admins' overview, from indexes only (migration
auth_keys_0006): new users by ranges of `users.created_at`, plans by ranges of `accounts.plan_expires_at`,
and users by tier from `accounts.tier`.

Users by tier counts accounts: every user has an account of their own and every account one user
(registration, users.py, creates the two together and nothing else creates either; a team member keeps their
own account, and teams link them in their own table). Joining users to accounts instead would look up one
account per user, about 3 ms a thousand users; the count of an index is one pass over it.
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from edge.services import UserCounts
from plugins.auth_keys.tables import accounts, users


def _count(table: sa.Table, *where: sa.ColumnElement[bool]) -> sa.ScalarSelect[int]:
    return sa.select(sa.func.count()).select_from(table).where(*where).scalar_subquery()


def _moment(name: str) -> sa.BindParameter[datetime]:
    return sa.bindparam(name, type_=sa.DateTime())


@functools.cache
def _statement(since: int) -> sa.Select[Any]:
    """Built once per number of `new_since` moments, with bound parameters: building and cache-keying it
    on every call cost more than running it."""
    expires = accounts.c.plan_expires_at
    now = _moment("b_now")
    scalars = [
        *(_count(users, users.c.created_at >= _moment(f"b_since_{i}")) for i in range(since)),
        _count(accounts, expires > now),
        _count(accounts, expires > now, expires <= _moment("b_expiring")),
    ]
    # One round trip: a row per tier, each with the same (uncorrelated, computed once) counts beside it.
    return sa.select(accounts.c.tier, sa.func.count(), *scalars).group_by(accounts.c.tier).order_by(accounts.c.tier)


async def counts(
    conn: AsyncConnection, *, now: datetime, new_since: tuple[datetime, ...], expiring_before: datetime
) -> UserCounts:
    params = {"b_now": now, "b_expiring": expiring_before} | {f"b_since_{i}": t for i, t in enumerate(new_since)}
    rows = (await conn.execute(_statement(len(new_since)), params)).all()
    values = [int(n) for n in rows[0][2:]] if rows else [0] * (len(new_since) + 2)  # no account: no user, no plan
    return UserCounts(
        users_by_tier=tuple((str(row[0]), int(row[1])) for row in rows),
        new_users=tuple(values[: len(new_since)]),
        active_subscriptions=values[-2],
        expiring_subscriptions=values[-1],
    )
