"""API keys in the database. The secret is shown once; only its SHA-256 and a short prefix are kept."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from edge.context import Principal
from edge.db import Database
from edge.services import SpendLimit, SpendLimits
from plugins.auth_keys.clock import iso, unix, utcnow
from plugins.auth_keys.tables import accounts, api_keys, users

SECRET_PREFIX = "rsk_"
# "rsk_" and 8 characters of the random part: enough to tell keys apart, far too little to guess one.
VISIBLE = len(SECRET_PREFIX) + 8


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def secret_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A live key as the authenticator needs it."""

    principal: Principal
    expires_at: int | None


def key_json(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "prefix": row.prefix,
        "scopes": row.scopes.split(","),
        "created_at": iso(row.created_at),
        "expires_at": iso(row.expires_at),
        "last_used_at": iso(row.last_used_at),
        "revoked_at": iso(row.revoked_at),
        "limit_milli": row.limit_milli,
        "limit_period": row.limit_period,
    }


def key_limits(*, key_id: int, limit_milli: int | None, limit_period: str | None) -> tuple[object, ...]:
    """The principal's facts for a key: its spend limit (edge.services.SpendLimits), or none at all, so
    a key without a limit costs the credits plugin nothing."""
    if limit_milli is None:
        return ()
    return (SpendLimits((SpendLimit("key", key_id, int(limit_milli), limit_period or "total"),)),)


_own = users.alias("own")
# The key's account's own user is banned (the user who registered the account; a team's members each have
# their own account, so they are never the team account's own user).
_OWN_USER_BANNED = (
    sa.exists().where(_own.c.account_id == api_keys.c.account_id, _own.c.banned_at.is_not(None)).correlate(api_keys)
)

KEY_COLUMNS = (
    api_keys.c.id,
    api_keys.c.name,
    api_keys.c.prefix,
    api_keys.c.scopes,
    api_keys.c.created_at,
    api_keys.c.expires_at,
    api_keys.c.last_used_at,
    api_keys.c.revoked_at,
    api_keys.c.limit_milli,
    api_keys.c.limit_period,
)


class KeyStore:
    def __init__(self, *, database: Database) -> None:
        self.db = database

    async def create(
        self,
        *,
        account_id: int,
        user_id: int | None,
        name: str,
        scopes: tuple[str, ...],
        expires_at: datetime | None,
        limit: tuple[int | None, str | None] = (None, None),
    ) -> tuple[dict[str, Any], str]:
        """Store a new key; returns its JSON and the secret (the only time the secret exists)."""
        secret = new_secret()
        async with self.db.begin() as conn:
            result = await conn.execute(
                sa.insert(api_keys).values(
                    account_id=account_id,
                    user_id=user_id,
                    name=name,
                    prefix=secret[:VISIBLE],
                    secret_hash=secret_digest(secret),
                    scopes=",".join(scopes),
                    created_at=utcnow(),
                    expires_at=expires_at,
                    limit_milli=limit[0],
                    limit_period=limit[1],
                )
            )
            key_id = int(result.inserted_primary_key[0])  # type: ignore[index]
            row = (await conn.execute(sa.select(*KEY_COLUMNS).where(api_keys.c.id == key_id))).one()
        return key_json(row), secret

    async def for_account(self, *, account_id: int) -> list[dict[str, Any]]:
        query = sa.select(*KEY_COLUMNS).where(api_keys.c.account_id == account_id).order_by(api_keys.c.id.desc())
        async with self.db.connect() as conn:
            return [key_json(row) for row in await conn.execute(query)]

    async def revoke(self, *, key_id: int, account_id: int) -> dict[str, Any] | None:
        """Mark the account's key revoked (idempotent); None when the account has no such key."""
        mine = sa.and_(api_keys.c.id == key_id, api_keys.c.account_id == account_id)
        async with self.db.begin() as conn:
            await conn.execute(
                sa.update(api_keys).where(mine, api_keys.c.revoked_at.is_(None)).values(revoked_at=utcnow())
            )
            row = (await conn.execute(sa.select(*KEY_COLUMNS).where(mine))).first()
        return None if row is None else key_json(row)

    async def revoke_all(self, *, account_id: int, user_id: int, conn: AsyncConnection | None = None) -> list[int]:
        """Revoke every live key of the user on the account (in `conn`'s transaction when given); the ids of
        those this call revoked."""
        if conn is None:
            async with self.db.begin() as own:
                return await self.revoke_all(account_id=account_id, user_id=user_id, conn=own)
        live = sa.and_(
            api_keys.c.account_id == account_id, api_keys.c.user_id == user_id, api_keys.c.revoked_at.is_(None)
        )
        ids = [int(i) for i in (await conn.execute(sa.select(api_keys.c.id).where(live))).scalars()]
        if ids:
            await conn.execute(sa.update(api_keys).where(api_keys.c.id.in_(ids)).values(revoked_at=utcnow()))
        return ids

    async def limit(self, *, key_id: int, account_id: int) -> tuple[int | None, str | None] | None:
        """The account's key's (limit_milli, limit_period); None when the account has no such key."""
        mine = sa.and_(api_keys.c.id == key_id, api_keys.c.account_id == account_id)
        async with self.db.connect() as conn:
            row = (await conn.execute(sa.select(api_keys.c.limit_milli, api_keys.c.limit_period).where(mine))).first()
        return None if row is None else (row.limit_milli, row.limit_period)

    async def set_limit(
        self, *, key_id: int, account_id: int, limit_milli: int | None, limit_period: str | None
    ) -> dict[str, Any] | None:
        """Set the account's key's spend limit (None: no limit); the key as it now is, or None when the
        account has no such key. The caller makes every worker forget the key's cached principal."""
        mine = sa.and_(api_keys.c.id == key_id, api_keys.c.account_id == account_id)
        async with self.db.begin() as conn:
            limited = {"limit_milli": limit_milli, "limit_period": limit_period}
            await conn.execute(sa.update(api_keys).where(mine).values(**limited))
            row = (await conn.execute(sa.select(*KEY_COLUMNS).where(mine))).first()
        return None if row is None else key_json(row)

    async def lookup(self, digest: str) -> KeyRecord | None:
        """The live key (not revoked, its user not banned, or for a key without a user its account's own
        user not banned) with this secret hash, with its account's tier and user's role."""
        query = (
            sa.select(
                api_keys.c.id,
                api_keys.c.account_id,
                api_keys.c.user_id,
                api_keys.c.scopes,
                api_keys.c.expires_at,
                api_keys.c.limit_milli,
                api_keys.c.limit_period,
                accounts.c.tier,
                accounts.c.plan_expires_at,
                users.c.role,
                users.c.locale,
            )
            .select_from(
                api_keys.join(accounts, accounts.c.id == api_keys.c.account_id).outerjoin(
                    users, users.c.id == api_keys.c.user_id
                )
            )
            .where(
                api_keys.c.secret_hash == digest,
                api_keys.c.revoked_at.is_(None),
                # A banned user's keys stop; a key without a user answers for its account's own user, so
                # it stops too while that user is banned (team members' keys on the account do not).
                users.c.banned_at.is_(None),
                sa.or_(api_keys.c.user_id.is_not(None), ~_OWN_USER_BANNED),
            )
        )
        async with self.db.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            return None
        principal = Principal(
            account_id=row.account_id,
            user_id=row.user_id,
            tier=row.tier,
            key_id=row.id,
            scopes=frozenset(row.scopes.split(",")),
            role=row.role or "user",
            locale=row.locale or "ar",
            plan_expires_at=unix(row.plan_expires_at),
            facts=key_limits(key_id=row.id, limit_milli=row.limit_milli, limit_period=row.limit_period),
        )
        return KeyRecord(principal=principal, expires_at=unix(row.expires_at))

    async def touch(self, *, key_id: int, when: datetime) -> None:
        async with self.db.begin() as conn:
            await conn.execute(sa.update(api_keys).where(api_keys.c.id == key_id).values(last_used_at=when))
