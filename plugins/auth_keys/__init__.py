"""Accounts, users, login sessions and scoped API keys; authenticates every /v1 call by its bearer key.

Provides two services (edge/services.py) at startup: `ACCOUNTS` (look an account up, set its plan,
invalidate cached principals of an account, user or key on every worker) and `GUARDS` (the portal's
session guards: current user, require a user, require an admin).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge.clock import SYSTEM, Clock
from edge.context import Principal, RequestContext
from edge.errors import Forbidden, Unauthorized
from edge.events import EnterpriseRegistered, Event, UserRegistered
from edge.hookspecs import hookimpl
from edge.services import ACCOUNTS, GUARDS
from edge.settings import ConfigError
from plugins.auth_keys import commands, routes, v1
from plugins.auth_keys.accounts import AccountStore
from plugins.auth_keys.clock import utcnow
from plugins.auth_keys.guards import SessionGuards
from plugins.auth_keys.keycache import MAX_ENTRIES, Entry, Invalidations, KeyCache
from plugins.auth_keys.keys import SECRET_PREFIX, KeyStore, secret_digest
from plugins.auth_keys.passwords import Passwords
from plugins.auth_keys.sessions import SessionStore
from plugins.auth_keys.throttle import Throttle
from plugins.auth_keys.users import UserStore

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection
    from starlette.routing import BaseRoute

    from edge.cli import Command
    from edge.gateway import Gateway

log = logging.getLogger("resayil.auth_keys")

SCOPE_FOR_METHOD = {
    "GET": "read",
    "HEAD": "read",
    "POST": "write",
    "PUT": "write",
    "PATCH": "write",
    "DELETE": "delete",
}
# Longer than any secret this plugin issues; longer tokens are refused without hashing them.
_MAX_TOKEN = 128


def invalid_key() -> Unauthorized:
    # One answer for unknown, revoked and expired keys, so a caller learns nothing about which it was.
    return Unauthorized(
        "The API key is not valid. Check it, or create a new one in the portal.", code="invalid_api_key"
    )


class Plugin:
    """Accounts, users, login sessions and scoped API keys; authenticates /v1 by bearer key."""

    @dataclass
    class Settings:
        session_idle_seconds: int = 2 * 3600
        session_absolute_seconds: int = 7 * 24 * 3600
        # Login attempts per login name (as typed, normalised) from one client IP (bucket), per login name
        # from all IPs together, and per client IP, in `login_window_seconds`.
        login_failures_per_name: int = 5
        login_attempts_per_name_all_ips: int = 50
        login_failures_per_ip: int = 20
        login_window_seconds: int = 15 * 60
        # Registrations whose email or phone is well-formed, per client IP and per email or phone.
        register_attempts_per_ip: int = 20
        register_attempts_per_name: int = 5
        register_window_seconds: int = 3600
        # zxcvbn's score (0-4) a new password needs; 3: "safely unguessable" in an offline slow-hash attack.
        password_min_score: int = 3
        key_cache_seconds: int = 60
        last_used_interval_seconds: int = 60
        # Moved: every /api body now has the gateway's one limit, `api.max_body_bytes`. Refused with that name.
        max_body_bytes: int | None = None
        # The tier a new registration starts on; `enterprise` also announces `enterprise.registered`.
        registration_tier: str = "basic"
        # Argon2id cost (RFC 9106's second recommendation by default).
        password_time_cost: int = 3
        password_memory_kib: int = 64 * 1024
        password_parallelism: int = 4

    def __init__(self, settings: Plugin.Settings) -> None:
        s = settings
        if s.max_body_bytes is not None:
            raise ConfigError(
                "plugins.auth_keys.settings.max_body_bytes: moved to the gateway's `api.max_body_bytes`, "
                "the one limit for every /api body"
            )
        for name in (
            "session_idle_seconds",
            "session_absolute_seconds",
            "login_failures_per_name",
            "login_attempts_per_name_all_ips",
            "login_failures_per_ip",
            "login_window_seconds",
            "register_attempts_per_ip",
            "register_attempts_per_name",
            "register_window_seconds",
            "key_cache_seconds",
        ):
            if getattr(s, name) < 1:
                raise ConfigError(f"plugins.auth_keys.settings.{name}: must be at least 1")
        if not 0 <= s.password_min_score <= 4:
            raise ConfigError("plugins.auth_keys.settings.password_min_score: must be from 0 to 4")
        self.settings = s
        self.passwords = Passwords(
            time_cost=s.password_time_cost, memory_kib=s.password_memory_kib, parallelism=s.password_parallelism
        )
        self.cache = KeyCache(ttl_seconds=s.key_cache_seconds)
        self._touched: dict[int, float] = {}
        self.clock: Clock = SYSTEM  # the gateway's, from startup
        self._gateway: Gateway | None = None
        self._sessions: SessionStore | None = None
        self._users: UserStore | None = None
        self._keys: KeyStore | None = None
        self._throttle: Throttle | None = None
        self._register_throttle: Throttle | None = None
        self._bus: Invalidations | None = None
        self._accounts: AccountStore | None = None
        self._guards: SessionGuards | None = None

    # ---- what startup opens; properties so a use before startup fails loudly -------------------------

    @property
    def gateway(self) -> Gateway:
        assert self._gateway is not None, "auth_keys has not started"
        return self._gateway

    @property
    def sessions(self) -> SessionStore:
        assert self._sessions is not None, "auth_keys has not started"
        return self._sessions

    @property
    def users(self) -> UserStore:
        assert self._users is not None, "auth_keys has not started"
        return self._users

    @property
    def keys(self) -> KeyStore:
        assert self._keys is not None, "auth_keys has not started"
        return self._keys

    @property
    def throttle(self) -> Throttle:
        """Login attempts, per login name and IP, per login name and per IP (password changes count too)."""
        assert self._throttle is not None, "auth_keys has not started"
        return self._throttle

    @property
    def register_throttle(self) -> Throttle:
        assert self._register_throttle is not None, "auth_keys has not started"
        return self._register_throttle

    @property
    def bus(self) -> Invalidations:
        assert self._bus is not None, "auth_keys has not started"
        return self._bus

    @property
    def accounts(self) -> AccountStore:
        """The `ACCOUNTS` service: plans and cache invalidation."""
        assert self._accounts is not None, "auth_keys has not started"
        return self._accounts

    @property
    def guards(self) -> SessionGuards:
        """The `GUARDS` service; this plugin's own routes use it too."""
        assert self._guards is not None, "auth_keys has not started"
        return self._guards

    # ---- hooks -----------------------------------------------------------------------------------------

    @hookimpl
    async def resayil_startup(self, gateway: Gateway) -> None:
        """Open the stores, the login throttle and the invalidation listener; compute the dummy hash."""
        s = self.settings
        tiers = gateway.config.tiers
        if tiers and s.registration_tier not in tiers:
            raise ConfigError(f"plugins.auth_keys.settings.registration_tier: no tier named {s.registration_tier!r}")
        self._gateway = gateway
        db = gateway.database
        self.clock = gateway.clock
        self._sessions = SessionStore(
            database=db,
            idle_seconds=s.session_idle_seconds,
            absolute_seconds=s.session_absolute_seconds,
            clock=gateway.clock,
        )
        self._users = UserStore(database=db)
        self._keys = KeyStore(database=db)
        self._throttle = Throttle(
            prefix="login",
            limits={
                "name_ip": s.login_failures_per_name,
                "name": s.login_attempts_per_name_all_ips,
                "ip": s.login_failures_per_ip,
            },
            window_seconds=s.login_window_seconds,
            redis=gateway.redis,
            message="Too many login attempts. Try again in {seconds} seconds.",
        )
        per_name = s.register_attempts_per_name
        self._register_throttle = Throttle(
            prefix="register",
            limits={"ip": s.register_attempts_per_ip, "email": per_name, "phone": per_name},
            window_seconds=s.register_window_seconds,
            redis=gateway.redis,
            message="Too many registration attempts. Try again in {seconds} seconds.",
        )
        self._bus = Invalidations(cache=self.cache, redis=gateway.redis)
        self._accounts = AccountStore(database=db, bus=self._bus, keys=self._keys)
        self._guards = SessionGuards(sessions=self._sessions)
        gateway.provide(ACCOUNTS, self._accounts)
        gateway.provide(GUARDS, self._guards)
        await self.passwords.start()
        await self._bus.start()
        # Sessions of users who never came back would otherwise stay forever.
        await self._sessions.purge_expired()

    @hookimpl
    async def resayil_shutdown(self, gateway: Gateway) -> None:
        """Stop listening for invalidations."""
        if self._bus is not None:
            await self._bus.stop()

    @hookimpl
    def resayil_routes(self, gateway: Gateway) -> list[BaseRoute]:
        """/api/auth/*, /api/me and /api/keys."""
        return routes.build(self)

    @hookimpl
    def resayil_v1_endpoints(self, gateway: Gateway) -> dict[tuple[str, str], Any]:
        """GET /v1/account and DELETE /v1/keys/current."""
        return v1.endpoints(self)

    @hookimpl
    def resayil_migrations(self) -> str:
        """accounts, users, sessions, api_keys (branch `auth_keys`)."""
        return str(Path(__file__).parent / "migrations")

    @hookimpl
    def resayil_commands(self) -> list[Command]:
        """`create-admin`."""
        return [commands.create_admin(self)]

    @hookimpl
    async def resayil_authenticate(self, ctx: RequestContext) -> Principal | None:
        """The principal of a `Bearer rsk_…` key; 401 `invalid_api_key` when unknown, revoked or expired.
        Other credentials are left to the next implementation."""
        header = ctx.headers.get("authorization")
        if not header:
            return None
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token.startswith(SECRET_PREFIX):
            return None
        if len(token) > _MAX_TOKEN:
            raise invalid_key()
        digest = secret_digest(token)
        entry = self.cache.entries.get(digest)
        if entry is None or entry.stale_at <= self.clock.monotonic():
            entry = await self._load(digest)
        if entry is None or (entry.expires_at is not None and entry.expires_at <= self.clock.time()):
            raise invalid_key()
        principal = entry.principal
        self._touch(principal.key_id)
        return principal

    @hookimpl(tryfirst=True)
    async def resayil_authorize(self, ctx: RequestContext) -> None:
        """The key's scopes allow the method: read for GET, write for POST, delete for DELETE; else 403
        `insufficient_scope`. Runs before other authorizers, so a refused call uses no rate allowance."""
        principal = ctx.principal
        if principal is None:
            return
        needed = SCOPE_FOR_METHOD.get(ctx.method, "write")
        if needed not in principal.scopes:
            raise Forbidden(
                f"This API key does not have the `{needed}` scope that {ctx.method} requests need.",
                code="insufficient_scope",
            )

    # ---- events ----------------------------------------------------------------------------------------

    async def publish_registered(self, conn: AsyncConnection, registration: dict[str, Any]) -> None:
        """`user.registered` (and `enterprise.registered` on that plan), in the registration's transaction."""
        found: list[Event] = [UserRegistered(**registration)]
        if registration["tier"] == "enterprise":
            found.append(EnterpriseRegistered(**registration))
        await self.gateway.events.publish(*found, conn=conn)

    # ---- internals -------------------------------------------------------------------------------------

    async def _load(self, digest: str) -> Entry | None:
        generation = self.cache.generation
        record = await self.keys.lookup(digest)
        if record is None:
            return None
        return self.cache.put(
            digest,
            principal=record.principal,
            expires_at=record.expires_at,
            generation=generation,
            now=self.clock.monotonic(),
            keep=self.bus.live,
        )

    def _touch(self, key_id: int | None) -> None:
        """Write `last_used_at` at most once an interval per key, off the request path."""
        if key_id is None:
            return
        now = self.clock.monotonic()
        last = self._touched.get(key_id)
        if last is not None and now - last < self.settings.last_used_interval_seconds:
            return
        if len(self._touched) >= MAX_ENTRIES:
            self._touched.clear()
        self._touched[key_id] = now
        self.gateway.spawn(self._write_last_used(key_id))

    async def _write_last_used(self, key_id: int) -> None:
        try:
            redis = self.gateway.redis
            interval = max(1, self.settings.last_used_interval_seconds)
            # Other workers touch the same key: the first to claim the interval writes it.
            if redis is not None and not await redis.set(f"resayil:auth:used:{key_id}", b"1", nx=True, ex=interval):
                return
            await self.keys.touch(key_id=key_id, when=utcnow(self.clock))
        except Exception:
            log.exception("could not record last_used_at", extra={"fields": {"key": key_id}})
