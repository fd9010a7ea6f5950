"""Helpers for tests that need a logged-in portal user or an API key (plugins/auth_keys must be enabled).

    user = await register_user(served, tier="pro")
    async with served.request("GET", "/api/me", headers=user.headers) as resp: ...
    secret = await create_key(served, user, scopes=("read",))
    async with served.request("GET", "/v1/models", headers={"Authorization": f"Bearer {secret}"}) as resp: ...

`user.headers` carries the session cookie and the X-CSRF-Token, so it works for every method. (The test
client keeps no cookies for 127.0.0.1, which is why the cookie travels as a header.)
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiohttp
import sqlalchemy as sa
from multidict import CIMultiDict

from edge.services import ACCOUNTS
from plugins.auth_keys.sessions import COOKIE_NAME
from plugins.auth_keys.tables import users

PASSWORD = "correct horse battery"
# Cheap Argon2id for tests: the same code path, a fraction of the time.
FAST_PASSWORDS = {"password_time_cost": 1, "password_memory_kib": 8192, "password_parallelism": 1}
# Tests register many users from 127.0.0.1; the registration limits have their own tests.
MANY_REGISTRATIONS = {"register_attempts_per_ip": 10_000, "register_attempts_per_name": 10_000}


def auth_plugin_entry(**settings: Any) -> dict[str, Any]:
    """The `plugins:` entry for auth_keys with fast password hashing and room for many registrations;
    `settings` override."""
    return {"name": "auth_keys", "settings": {**FAST_PASSWORDS, **MANY_REGISTRATIONS, **settings}}


def auth_config(
    ollama: Any, db_url: str, *, redis_url: str | None = None, server: dict[str, Any] | None = None, **settings: Any
) -> dict[str, Any]:
    """`base_config` with only auth_keys enabled (fast hashing, `settings` on top)."""
    from tests.conftest import base_config

    return base_config(
        ollama_url=ollama.url,
        database_url=db_url,
        redis_url=redis_url,
        plugins=[auth_plugin_entry(**settings)],
        **(server or {}),
    )


@dataclass
class LoggedIn:
    user_id: int
    account_id: int
    email: str
    phone: str
    password: str
    csrf_token: str = field(repr=False)
    session: str = field(repr=False)
    user: dict[str, Any] = field(default_factory=dict)

    @property
    def cookies(self) -> dict[str, str]:
        return {COOKIE_NAME: self.session}

    @property
    def headers(self) -> dict[str, str]:
        return {"Cookie": f"{COOKIE_NAME}={self.session}", "X-CSRF-Token": self.csrf_token}


def unique_email() -> str:
    return f"user-{secrets.token_hex(6)}@example.com"


def unique_phone() -> str:
    # A Kuwaiti mobile number: +965 and eight digits starting with 9.
    return f"+9659{secrets.randbelow(10**7):07d}"


def session_from(resp: Any) -> str:
    """The session token from a response's Set-Cookie."""
    cookie = resp.cookies.get(COOKIE_NAME)
    assert cookie is not None and cookie.value, "the response set no session cookie"
    return str(cookie.value)


async def register_user(
    served: Any,
    *,
    tier: str = "basic",
    admin: bool = False,
    locale: str = "ar",
    name: str = "Test User",
    email: str | None = None,
    phone: str | None = None,
    password: str = PASSWORD,
    plan_expires_at: datetime | None = None,
) -> LoggedIn:
    """Register through the API (which logs in), then set the tier, plan expiry and role directly."""
    body = {
        "name": name,
        "email": email or unique_email(),
        "phone": phone or unique_phone(),
        "password": password,
        "locale": locale,
    }
    async with served.request("POST", "/api/auth/register", json=body) as resp:
        data = await resp.json()
        assert resp.status == 201, data
        session = session_from(resp)
    user = data["user"]
    logged = LoggedIn(
        user_id=user["id"],
        account_id=user["account_id"],
        email=user["email"],
        phone=user["phone"],
        password=password,
        csrf_token=data["csrf_token"],
        session=session,
        user=user,
    )
    if tier != "basic" or plan_expires_at is not None:
        await set_tier(served, account_id=logged.account_id, tier=tier, plan_expires_at=plan_expires_at)
    if admin:
        async with served.gateway.database.begin() as conn:
            await conn.execute(sa.update(users).where(users.c.id == logged.user_id).values(role="admin"))
        await served.gateway.service(ACCOUNTS).invalidate_user(logged.user_id)
    return logged


async def set_tier(served: Any, *, account_id: int, tier: str, plan_expires_at: datetime | None = None) -> None:
    """Change an account's tier (and plan expiry) the way a billing plugin would: the accounts service."""
    account = await served.gateway.service(ACCOUNTS).set_plan(
        account_id=account_id, tier=tier, plan_expires_at=plan_expires_at
    )
    assert account is not None and (account.tier, account.plan_expires_at) == (tier, plan_expires_at)


async def login(served: Any, *, login: str, password: str = PASSWORD) -> tuple[int, dict[str, Any], str | None]:
    """(status, body, session token or None) of POST /api/auth/login."""
    async with served.request("POST", "/api/auth/login", json={"login": login, "password": password}) as resp:
        cookie = resp.cookies.get(COOKIE_NAME)
        return resp.status, await resp.json(), (cookie.value if cookie is not None else None)


async def create_key(
    served: Any,
    logged_in: LoggedIn,
    *,
    scopes: tuple[str, ...] | list[str] = ("read", "write"),
    name: str = "test key",
    expires_at: str | None = None,
) -> str:
    """Create an API key for the user's account through the API; returns the secret."""
    body: dict[str, Any] = {"name": name, "scopes": list(scopes)}
    if expires_at is not None:
        body["expires_at"] = expires_at
    async with served.request("POST", "/api/keys", json=body, headers=logged_in.headers) as resp:
        data = await resp.json()
        assert resp.status == 201, data
    return str(data["secret"])


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


Answer = tuple[int, dict[str, Any], CIMultiDict[str]]


async def login_at(http: aiohttp.ClientSession, url: str, login_name: str, password: str) -> Answer:
    """(status, body, headers) of POST /api/auth/login on the gateway at `url`."""
    async with http.post(url + "/api/auth/login", json={"login": login_name, "password": password}) as resp:
        return resp.status, await resp.json(), CIMultiDict(resp.headers)


async def guess_burst(
    http: aiohttp.ClientSession, url: str, *, guesses: list[tuple[str, str]], then: tuple[str, str]
) -> tuple[list[int], Answer]:
    """Send every (login, password) of `guesses` at once; as soon as one of them is answered 429 (or all
    are answered), send `then`. Returns the statuses of the burst and the answer to `then`."""
    tasks = [asyncio.create_task(login_at(http, url, *guess)) for guess in guesses]
    pending: set[asyncio.Task[Answer]] = set(tasks)
    while pending:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        if any(task.result()[0] == 429 for task in done):
            break
    last = await login_at(http, url, *then)
    return [(await task)[0] for task in tasks], last
