"""The accounts service (`edge.services.Accounts`): what other plugins read and change of an account.

An account's owner is its first user (the one registration created), to whom notifications go. Every
change of the plan is followed by an invalidation, so cached principals on every worker follow within a
second (and in any case after `key_cache_seconds`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from edge.db import Database
from edge.inputs import FieldError
from edge.services import (
    KEEP,
    Account,
    Contact,
    IssuedKey,
    Keep,
    KeyChange,
    KeySummary,
    UserCounts,
    UserProfile,
    UserQuery,
)
from plugins.auth_keys import directory, inputs, team_keys
from plugins.auth_keys.counts import counts as count_users
from plugins.auth_keys.keycache import Invalidations
from plugins.auth_keys.keys import KeyStore
from plugins.auth_keys.phones import normalize_phone
from plugins.auth_keys.tables import accounts, users

# accounts.id is a signed 64-bit integer; SQLite refuses to even compare with a larger one.
MAX_ID = 2**63 - 1
# More admins than this is a mistake, not a team: alerts go to the first ones.
MAX_ADMINS = 500
# User ids per `IN (...)` of `profiles`.
_BATCH = 500

_others = users.alias("others")
_OWNER = (
    sa.select(sa.func.min(_others.c.id))
    .where(_others.c.account_id == accounts.c.id)
    .correlate(accounts)
    .scalar_subquery()
)
_ACCOUNT = sa.select(
    accounts.c.id,
    accounts.c.tier,
    accounts.c.plan_expires_at,
    users.c.id.label("owner_user_id"),
    users.c.locale,
    users.c.phone,
).select_from(accounts.outerjoin(users, users.c.id == _OWNER))


class AccountStore:
    """Implements `edge.services.Accounts` over the auth tables and the invalidation bus."""

    def __init__(self, *, database: Database, bus: Invalidations, keys: KeyStore) -> None:
        self.db = database
        self.bus = bus
        self.keys = keys
        # Invalidations sent after a caller's transaction committed (strong references until they finish).
        self._telling: set[asyncio.Task[None]] = set()

    async def account(self, account_id: int, *, conn: AsyncConnection | None = None) -> Account | None:
        if not 0 < account_id <= MAX_ID:
            return None
        if conn is not None:
            return await _read(conn, account_id)
        async with self.db.connect() as own:
            return await _read(own, account_id)

    async def set_plan(
        self,
        *,
        account_id: int,
        tier: str | Keep = KEEP,
        plan_expires_at: datetime | Keep | None = KEEP,
        if_plan_expires_at: datetime | Keep | None = KEEP,
        conn: AsyncConnection | None = None,
    ) -> Account | None:
        if not 0 < account_id <= MAX_ID:
            return None
        values: dict[str, Any] = {}
        if tier is not KEEP:
            values["tier"] = tier
        if plan_expires_at is not KEEP:
            values["plan_expires_at"] = plan_expires_at
        if if_plan_expires_at is not KEEP:
            if conn is None:
                async with self.db.begin() as own:
                    return await self.set_plan(
                        account_id=account_id,
                        tier=tier,
                        plan_expires_at=plan_expires_at,
                        if_plan_expires_at=if_plan_expires_at,
                        conn=own,
                    )
            if not await _set_if(conn, account_id, values, expiry=if_plan_expires_at):
                return None
        if conn is not None:
            account = await _set(conn, account_id, values)
            # Caches must not learn of a plan that could still roll back: tell them after the commit.
            message = f"account:{int(account_id)}"
            told = account is None or not values or self.db.after_commit(conn, lambda: self._tell_later(message))
            if not told:
                raise ValueError("set_plan: conn must come from the gateway's database.begin()")
            return account
        async with self.db.begin() as own:
            account = await _set(own, account_id, values)
        if account is not None and values:
            await self.invalidate_account(account_id)
        return account

    async def expiring(self, *, before: datetime, after_id: int = 0, limit: int = 500) -> list[Account]:
        query = (
            _ACCOUNT.where(
                accounts.c.plan_expires_at.is_not(None),
                accounts.c.plan_expires_at < before,
                accounts.c.id > max(0, min(after_id, MAX_ID)),
            )
            .order_by(accounts.c.id)
            .limit(max(1, limit))
        )
        async with self.db.connect() as conn:
            return [_account(row) for row in (await conn.execute(query)).all()]

    async def lapse(self, *, account_id: int, plan_expires_at: datetime, tier: str) -> bool:
        if not 0 < account_id <= MAX_ID:
            return False
        async with self.db.begin() as conn:
            # Conditional on the expiry read by the caller: a renewal committed first moved it, and one that
            # commits after this waits for the row and extends from now (the plan has lapsed).
            result = await conn.execute(
                sa.update(accounts)
                .where(accounts.c.id == account_id, accounts.c.plan_expires_at == plan_expires_at)
                .values(tier=tier, plan_expires_at=None)
            )
        if result.rowcount != 1:
            return False
        await self.invalidate_account(account_id)
        return True

    async def accounts(self, account_ids: Sequence[int]) -> list[Account]:
        wanted = sorted({i for i in account_ids if 0 < i <= MAX_ID})
        if not wanted:
            return []
        async with self.db.connect() as conn:
            rows = (await conn.execute(_ACCOUNT.where(accounts.c.id.in_(wanted)).order_by(accounts.c.id))).all()
        return [_account(row) for row in rows]

    async def users(self, wanted: UserQuery) -> list[UserProfile]:
        async with self.db.connect() as conn:
            return await directory.search(conn, wanted)

    async def user(self, user_id: int) -> UserProfile | None:
        async with self.db.connect() as conn:
            return await directory.one(conn, user_id)

    async def counts(self, *, now: datetime, new_since: tuple[datetime, ...], expiring_before: datetime) -> UserCounts:
        async with self.db.connect() as conn:
            return await count_users(conn, now=now, new_since=new_since, expiring_before=expiring_before)

    async def profiles(self, user_ids: Collection[int]) -> list[UserProfile]:
        wanted = sorted({int(i) for i in user_ids if 0 < i <= MAX_ID})
        found: list[UserProfile] = []
        async with self.db.connect() as conn:
            for start in range(0, len(wanted), _BATCH):
                found += await directory.many(conn, wanted[start : start + _BATCH])
        return found

    def normal_email(self, raw: str) -> str | None:
        try:
            return inputs.email(raw)
        except FieldError:
            return None

    def normal_phone(self, raw: str) -> str | None:
        return normalize_phone(raw) if isinstance(raw, str) else None

    async def account_keys(self, *, account_id: int) -> list[KeySummary]:
        async with self.db.connect() as conn:
            return await directory.keys(conn, account_id=account_id)

    async def team_keys(
        self, *, account_id: int, user_id: int | None = None, before_id: int | None = None, limit: int = 50
    ) -> list[KeySummary]:
        async with self.db.connect() as conn:
            return await team_keys.listing(
                conn, account_id=account_id, user_id=user_id, before_id=before_id, limit=limit
            )

    async def revoke_team_key(
        self, *, account_id: int, key_id: int, user_id: int | None = None, conn: AsyncConnection | None = None
    ) -> KeyChange | None:
        return await self._change_key(
            key_id, conn, lambda c: team_keys.revoke(c, account_id=account_id, key_id=key_id, user_id=user_id)
        )

    async def set_team_key_limit(
        self, *, account_id: int, key_id: int, fields: Mapping[str, Any], conn: AsyncConnection | None = None
    ) -> KeyChange | None:
        return await self._change_key(
            key_id, conn, lambda c: team_keys.set_limit(c, account_id=account_id, key_id=key_id, fields=fields)
        )

    async def _change_key(
        self,
        key_id: int,
        conn: AsyncConnection | None,
        change: Callable[[AsyncConnection], Awaitable[KeyChange | None]],
    ) -> KeyChange | None:
        """Run `change` on one team key in `conn`'s transaction (or one of its own); a key it changed is
        forgotten by every worker once that transaction commits."""
        if conn is None:
            async with self.db.begin() as own:
                return await self._change_key(key_id, own, change)
        changed = await change(conn)
        if changed is not None and changed.before != changed.after:
            self._forget_after(conn, [key_id])
        return changed

    async def ban(self, *, user_id: int, conn: AsyncConnection | None = None) -> UserProfile | None:
        return await self._set_banned(user_id=user_id, banned=True, conn=conn)

    async def unban(self, *, user_id: int, conn: AsyncConnection | None = None) -> UserProfile | None:
        return await self._set_banned(user_id=user_id, banned=False, conn=conn)

    async def _set_banned(self, *, user_id: int, banned: bool, conn: AsyncConnection | None) -> UserProfile | None:
        if conn is None:
            async with self.db.begin() as own:
                found = await self._set_banned(user_id=user_id, banned=banned, conn=own)
            return found
        if not await directory.set_banned(conn, user_id=user_id, banned=banned):
            return None
        found = await directory.one(conn, user_id)
        assert found is not None
        # The user's own keys, and the keys without a user on their own account (which answer for it, see
        # KeyStore.lookup). Workers must drop them only once the ban is committed (a lookup before the
        # commit would cache a key as live again), so the invalidations go out after it.
        told = (f"user:{int(user_id)}", f"account:{int(found.account_id)}")
        if not self.db.after_commit(conn, lambda: self._tell_later(*told)):
            raise ValueError("ban/unban: conn must come from the gateway's database.begin()")
        return found

    def _tell_later(self, *messages: str) -> None:
        # This worker forgets at once (before the caller answers); the others hear it through Redis.
        for message in messages:
            self.bus.cache.apply(message)
            task = asyncio.ensure_future(self.bus.publish(message))
            self._telling.add(task)
            task.add_done_callback(self._telling.discard)

    async def invalidate_account(self, account_id: int) -> None:
        await self.bus.publish(f"account:{int(account_id)}")

    async def invalidate_user(self, user_id: int) -> None:
        await self.bus.publish(f"user:{int(user_id)}")

    async def invalidate_key(self, key_id: int) -> None:
        await self.bus.publish(f"key:{int(key_id)}")

    async def issue_key(self, *, account_id: int, user_id: int, name: str, scopes: tuple[str, ...]) -> IssuedKey:
        key, secret = await self.keys.create(
            account_id=account_id, user_id=user_id, name=name, scopes=scopes, expires_at=None
        )
        return IssuedKey(id=key["id"], name=key["name"], prefix=key["prefix"], secret=secret)

    async def revoke_keys(self, *, account_id: int, user_id: int, conn: AsyncConnection | None = None) -> list[int]:
        if conn is None:
            revoked = await self.keys.revoke_all(account_id=account_id, user_id=user_id)
            for key_id in revoked:
                await self.invalidate_key(key_id)
            return revoked
        revoked = await self.keys.revoke_all(account_id=account_id, user_id=user_id, conn=conn)
        if revoked:
            self._forget_after(conn, revoked)
        return revoked

    def _forget_after(self, conn: AsyncConnection, key_ids: list[int]) -> None:
        # As for a ban: workers forget the keys only once the change is committed (a lookup before the
        # commit would cache the key as it was).
        if not self.db.after_commit(conn, lambda: self._forget_keys(key_ids)):
            raise ValueError("conn must come from the gateway's database.begin()")

    def _forget_keys(self, key_ids: list[int]) -> None:
        for key_id in key_ids:
            self._tell_later(f"key:{int(key_id)}")

    async def admins(self) -> list[Contact]:
        query = (
            sa.select(users.c.id, users.c.phone, users.c.locale)
            .where(users.c.role == "admin")
            .order_by(users.c.id)
            .limit(MAX_ADMINS)
        )
        async with self.db.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [Contact(user_id=int(row.id), phone=row.phone, locale=row.locale or "ar") for row in rows]


async def _set(conn: AsyncConnection, account_id: int, values: dict[str, Any]) -> Account | None:
    if values:
        result = await conn.execute(sa.update(accounts).where(accounts.c.id == account_id).values(**values))
        if not result.rowcount:
            # MariaDB counts changed rows, not matched ones: an unchanged plan is still an account.
            found = await conn.scalar(sa.select(accounts.c.id).where(accounts.c.id == account_id))
            if found is None:
                return None
    return await _read(conn, account_id)


async def _set_if(conn: AsyncConnection, account_id: int, values: dict[str, Any], *, expiry: datetime | None) -> bool:
    """Apply `values` only while the plan still expires at `expiry` (the row is locked by the UPDATE, and a
    change committed meanwhile is seen by it); whether the account now has them."""
    held = accounts.c.plan_expires_at.is_(None) if expiry is None else accounts.c.plan_expires_at == expiry
    if values:
        result = await conn.execute(sa.update(accounts).where(accounts.c.id == account_id, held).values(**values))
        if result.rowcount:
            return True
    # MariaDB counts changed rows only: the values may already be there (or no values at all).
    found = (await conn.execute(sa.select(accounts).where(accounts.c.id == account_id, held))).first()
    return found is not None


async def _read(conn: AsyncConnection, account_id: int) -> Account | None:
    row = (await conn.execute(_ACCOUNT.where(accounts.c.id == account_id))).first()
    return None if row is None else _account(row)


def _account(row: Any) -> Account:
    return Account(
        id=int(row.id),
        tier=row.tier,
        plan_expires_at=row.plan_expires_at,
        owner_user_id=None if row.owner_user_id is None else int(row.owner_user_id),
        locale=row.locale or "ar",
        phone=row.phone,
    )
