"""Accounts and their users in the database: create, find, update."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from edge.db import Database
from plugins.auth_keys.clock import iso, utcnow
from plugins.auth_keys.tables import accounts, users


class Announce(Protocol):
    def __call__(self, conn: AsyncConnection, *, user_id: int, account_id: int) -> Awaitable[None]: ...


class Also(Protocol):
    def __call__(self, conn: AsyncConnection) -> Awaitable[None]: ...


PROFILE_COLUMNS = (
    users.c.id,
    users.c.account_id,
    users.c.name,
    users.c.email,
    users.c.phone,
    users.c.role,
    users.c.locale,
    users.c.created_at,
    accounts.c.tier,
    accounts.c.plan_expires_at,
)


class Taken(Exception):
    """The email or phone belongs to another user: `fields` maps each to its code."""

    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__("taken")
        self.fields = fields


class UserStore:
    def __init__(self, *, database: Database) -> None:
        self.db = database

    async def taken(self, *, email: str | None, phone: str | None, except_user: int | None = None) -> dict[str, str]:
        fields: dict[str, str] = {}
        clauses = []
        if email:
            clauses.append(users.c.email == email)
        if phone:
            clauses.append(users.c.phone == phone)
        if not clauses:
            return fields
        query = sa.select(users.c.id, users.c.email, users.c.phone).where(sa.or_(*clauses))
        async with self.db.connect() as conn:
            for row in await conn.execute(query):
                if row.id == except_user:
                    continue
                if email and row.email == email:
                    fields["email"] = "email_taken"
                if phone and row.phone == phone:
                    fields["phone"] = "phone_taken"
        return fields

    async def create(
        self,
        *,
        name: str,
        email: str,
        phone: str,
        password_hash: str,
        locale: str,
        tier: str,
        role: str = "user",
        announce: Announce | None = None,
    ) -> tuple[int, int]:
        """Create the account and its first user; returns (user_id, account_id). Raises Taken.

        `announce(conn, user_id=, account_id=)` runs inside the creating transaction (to publish events that
        exist exactly when the user does)."""
        now = utcnow()
        try:
            async with self.db.begin() as conn:
                result = await conn.execute(sa.insert(accounts).values(name=name, tier=tier, created_at=now))
                account_id = int(result.inserted_primary_key[0])  # type: ignore[index]
                result = await conn.execute(
                    sa.insert(users).values(
                        account_id=account_id,
                        name=name,
                        email=email,
                        phone=phone,
                        password_hash=password_hash,
                        role=role,
                        locale=locale,
                        created_at=now,
                        password_changed_at=now,
                    )
                )
                user_id = int(result.inserted_primary_key[0])  # type: ignore[index]
                if announce is not None:
                    await announce(conn, user_id=user_id, account_id=account_id)
        except IntegrityError:
            # Lost a race with a concurrent registration: name what is taken now.
            raise Taken(await self.taken(email=email, phone=phone) or {"email": "email_taken"}) from None
        return user_id, account_id

    async def credentials(self, login: str) -> Any:
        """(id, password_hash, banned_at) of the user whose email or E.164 phone is `login`."""
        column = users.c.email if "@" in login else users.c.phone
        query = sa.select(users.c.id, users.c.password_hash, users.c.banned_at).where(column == login)
        async with self.db.connect() as conn:
            return (await conn.execute(query)).first()

    async def password_hash(self, user_id: int) -> str | None:
        async with self.db.connect() as conn:
            value = await conn.scalar(sa.select(users.c.password_hash).where(users.c.id == user_id))
        return None if value is None else str(value)

    async def set_password(self, *, user_id: int, password_hash: str) -> None:
        async with self.db.begin() as conn:
            await conn.execute(
                sa.update(users)
                .where(users.c.id == user_id)
                .values(password_hash=password_hash, password_changed_at=utcnow())
            )

    async def update(self, *, user_id: int, values: dict[str, Any], also: Also | None = None) -> None:
        """Set the user's columns; `also` runs in the same transaction (another plugin's part of the profile)."""
        if values or also is not None:
            async with self.db.begin() as conn:
                if values:
                    await conn.execute(sa.update(users).where(users.c.id == user_id).values(**values))
                if also is not None:
                    await also(conn)

    async def find(self, *, email: str | None = None, phone: str | None = None) -> Any:
        column, value = (users.c.email, email) if email else (users.c.phone, phone)
        async with self.db.connect() as conn:
            return (await conn.execute(sa.select(users.c.id, users.c.role).where(column == value))).first()

    async def profile(self, user_id: int) -> dict[str, Any] | None:
        query = (
            sa.select(*PROFILE_COLUMNS)
            .select_from(users.join(accounts, accounts.c.id == users.c.account_id))
            .where(users.c.id == user_id)
        )
        async with self.db.connect() as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else profile_json(row)


def profile_json(row: Any) -> dict[str, Any]:
    """What the portal shows of a user; never the password hash."""
    return {
        "id": row.id,
        "account_id": row.account_id,
        "name": row.name,
        "email": row.email,
        "phone": row.phone,
        "role": row.role,
        "locale": row.locale,
        "tier": row.tier,
        "created_at": iso(row.created_at),
        "plan_expires_at": iso(row.plan_expires_at),
    }


__all__ = ["Taken", "UserStore", "profile_json"]
