"""Server-side login sessions: the cookie holds a random token, the database only its SHA-256."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa

from edge.clock import Clock
from edge.db import Database
from edge.services import PortalUser
from plugins.auth_keys.clock import unix, utcnow
from plugins.auth_keys.tables import accounts, sessions, users

COOKIE_NAME = "resayil_session"
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{32,128}$")


@dataclass(frozen=True, slots=True)
class SessionUser(PortalUser):
    """The portal user (the guards' answer to every plugin), with what only this plugin's routes use."""

    csrf_token: str = field(repr=False)
    # The stored hash, not the cookie value: lets a password change keep this session and end the others.
    session_id: str = field(repr=False)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def csrf_for(token: str) -> str:
    """The session's CSRF token, derived from the cookie value: nothing more to store, and it does not
    reveal the cookie."""
    mac = hmac.new(token.encode(), b"resayil-csrf", hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


class SessionStore:
    """Creates, loads, refreshes and ends sessions, with idle and absolute expiry."""

    def __init__(self, *, database: Database, idle_seconds: int, absolute_seconds: int, clock: Clock) -> None:
        self.db = database
        self.clock = clock
        self.idle = timedelta(seconds=idle_seconds)
        self.absolute = timedelta(seconds=absolute_seconds)
        # Refresh last_seen_at now and then rather than on every request, but often enough for short idles.
        self.touch_every = timedelta(seconds=max(1, min(60, idle_seconds // 4)))

    def _expired(self, now: datetime) -> sa.ColumnElement[bool]:
        return sa.or_(sessions.c.expires_at <= now, sessions.c.last_seen_at <= now - self.idle)

    async def create(
        self, *, user_id: int, ip: str | None, user_agent: str | None, replacing: str | None = None
    ) -> tuple[str, str]:
        """Start a session and return (cookie token, CSRF token). A session the browser already
        presented is ended first, so a planted session id never survives a login."""
        token = secrets.token_urlsafe(32)
        now = utcnow(self.clock)
        async with self.db.begin() as conn:
            if replacing and _TOKEN.match(replacing):
                await conn.execute(sa.delete(sessions).where(sessions.c.id == digest(replacing)))
            await conn.execute(
                sa.delete(sessions).where(
                    sessions.c.user_id == user_id,
                    self._expired(now),
                )
            )
            await conn.execute(
                sa.insert(sessions).values(
                    id=digest(token),
                    user_id=user_id,
                    created_at=now,
                    last_seen_at=now,
                    expires_at=now + self.absolute,
                    ip=(ip or None) and ip[:45],
                    user_agent=(user_agent or None) and user_agent[:255],
                )
            )
        return token, csrf_for(token)

    async def load(self, token: str | None) -> SessionUser | None:
        """The session's user, or None when the token is unknown, malformed or expired."""
        if not token or not _TOKEN.match(token):
            return None
        session_id = digest(token)
        query = (
            sa.select(
                sessions.c.last_seen_at,
                sessions.c.expires_at,
                users.c.id,
                users.c.account_id,
                users.c.role,
                users.c.locale,
                users.c.name,
                users.c.email,
                users.c.phone,
                accounts.c.tier,
                accounts.c.plan_expires_at,
            )
            .select_from(
                sessions.join(users, users.c.id == sessions.c.user_id).join(
                    accounts, accounts.c.id == users.c.account_id
                )
            )
            # A ban deletes the user's sessions; this keeps one created in the same instant out too.
            .where(sessions.c.id == session_id, users.c.banned_at.is_(None))
        )
        now = utcnow(self.clock)
        async with self.db.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            return None
        if now >= row.expires_at or now >= row.last_seen_at + self.idle:
            await self.end(token)
            return None
        if now - row.last_seen_at >= self.touch_every:
            async with self.db.begin() as conn:
                await conn.execute(sa.update(sessions).where(sessions.c.id == session_id).values(last_seen_at=now))
        return SessionUser(
            user_id=row.id,
            account_id=row.account_id,
            role=row.role,
            locale=row.locale,
            name=row.name,
            email=row.email,
            phone=row.phone,
            tier=row.tier,
            plan_expires_at=unix(row.plan_expires_at),
            csrf_token=csrf_for(token),
            session_id=session_id,
        )

    async def purge_expired(self) -> int:
        """Delete every session past its idle or absolute expiry; returns how many."""
        async with self.db.begin() as conn:
            result = await conn.execute(sa.delete(sessions).where(self._expired(utcnow(self.clock))))
        return int(result.rowcount or 0)

    async def end(self, token: str) -> None:
        if _TOKEN.match(token):
            async with self.db.begin() as conn:
                await conn.execute(sa.delete(sessions).where(sessions.c.id == digest(token)))

    async def end_others(self, *, user_id: int, keep_session_id: str | None) -> int:
        """End every session of the user except `keep_session_id`; returns how many ended."""
        condition = sessions.c.user_id == user_id
        if keep_session_id is not None:
            condition = sa.and_(condition, sessions.c.id != keep_session_id)
        async with self.db.begin() as conn:
            result = await conn.execute(sa.delete(sessions).where(condition))
        return int(result.rowcount or 0)
