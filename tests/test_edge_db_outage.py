"""A database that refuses connections is a temporary outage: /v1 answers 503 `database_unavailable` in
OpenAI's shape and /api the portal's one JSON shape, both with `retry-after`, never a 500, a traceback or
the driver's message; once the database takes connections again, so does the gateway.

MariaDB: a user of its own whose connection limit (MAX_USER_CONNECTIONS) another client fills, its
gateway's connections killed (as a server restart would), so every new one is refused (error 1203) or
found lost (2013); MariaDB says 1226 for the limit. SQLite: another process keeps the write lock past the busy timeout.
"""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pymysql
import pytest
import sqlalchemy as sa

from edge.db import Database
from edge.transient import outage_cause
from tests.conftest import MARIADB, truncate_mariadb, unique
from tests.support.credits import credits_config, until_settled
from tests.support.portal import (
    PASSWORD,
    auth_config,
    auth_plugin_entry,
    bearer,
    create_key,
    register_user,
    unique_email,
    unique_phone,
)

CHAT = {"model": "llama3.2:3b", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
MESSAGE = "The service's database is unavailable for a moment; retry the request shortly."


@dataclass
class LimitedUser:
    """A MariaDB user of its own on the test database, whose connection limit the test sets."""

    name: str
    password: str
    database: str

    @property
    def url(self) -> str:
        return f"mysql+aiomysql://{self.name}:{self.password}@127.0.0.1:3306/{self.database}"

    def connect(self) -> pymysql.Connection[Any]:
        return pymysql.connect(
            host="127.0.0.1", port=3306, user=self.name, password=self.password, database=self.database
        )

    def limit(self, connections: int) -> None:
        """At most `connections` connections at once (0: no limit); existing ones are not closed."""
        root(f"ALTER USER '{self.name}'@'%' WITH MAX_USER_CONNECTIONS {connections}")

    def kill_connections(self, *, keep: int | None = None) -> int:
        """Kill every connection of the user but `keep` (a connection id); how many were killed."""
        rows = root("SELECT id FROM information_schema.processlist WHERE user = %s", self.name)
        ids = [row[0] for row in rows if row[0] != keep]
        for connection_id in ids:
            root(f"KILL CONNECTION {int(connection_id)}")
        return len(ids)


def root(sql: str, *args: Any) -> tuple[tuple[Any, ...], ...]:
    conn = pymysql.connect(**MARIADB, autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args or None)
            return tuple(cur.fetchall())
    finally:
        conn.close()


@pytest.fixture
def limited_user(mariadb_database: str) -> Iterator[LimitedUser]:
    truncate_mariadb(mariadb_database)
    user = LimitedUser(unique("rsy_limited_"), secrets.token_hex(12), mariadb_database.rsplit("/", 1)[1])
    root("CREATE USER %s@'%%' IDENTIFIED BY %s", user.name, user.password)
    try:
        root(f"GRANT ALL PRIVILEGES ON `{user.database}`.* TO '{user.name}'@'%'")
        yield user
    finally:
        user.kill_connections()
        root(f"DROP USER IF EXISTS '{user.name}'@'%'")
    assert root("SELECT 1 FROM mysql.user WHERE user = %s", user.name) == ()


async def answer(served: Any, method: str, path: str, **kwargs: Any) -> tuple[int, dict[str, Any], Any, bytes]:
    async with served.request(method, path, **kwargs) as resp:
        raw = await resp.read()
        return resp.status, await resp.json(), resp.headers, raw


def assert_unavailable(
    status: int, body: dict[str, Any], headers: Any, raw: bytes, *secrets_: str, code: str = "database_unavailable"
) -> None:
    assert status == 503, body
    assert (body["error"]["type"], body["error"]["param"], body["error"]["code"]) == ("server_error", None, code)
    assert code != "database_unavailable" or body["error"]["message"] == MESSAGE
    assert int(headers["retry-after"]) > 0 and headers["content-type"].startswith("application/json")
    for hidden in ("Traceback", "Error", "sqlalchemy", "pymysql", "sqlite", *secrets_):
        assert hidden.encode() not in raw


async def test_mariadb_refusing_connections_is_503_on_v1_and_api_until_it_takes_them_again(
    serve: Any, ollama: Any, limited_user: LimitedUser
) -> None:
    config = credits_config(ollama_url=ollama.url, database_url=limited_user.url, extra_plugins=[auth_plugin_entry()])
    async with serve(config) as gw:
        user = await register_user(gw)
        secret = await create_key(gw, user)
        unseen = await create_key(gw, user, name="unused yet")
        await gw.gateway.plugin("credits").grant(
            account_id=user.account_id, amount_milli=1_000_000, kind="grant", reference="outage"
        )
        status, body, _, _ = await answer(gw, "POST", "/v1/chat/completions", json=CHAT, headers=bearer(secret))
        assert status == 200, body
        await until_settled(gw.gateway, user.account_id)

        hidden = (limited_user.name, "max_user_connections", "1226", "2013")
        limited_user.limit(1)
        holder = limited_user.connect()  # the one connection allowed (counted only when made under a limit)
        try:
            assert limited_user.kill_connections(keep=holder.thread_id()) > 0

            for _ in range(3):  # a connection found lost (2013), then every new one refused (1226)
                # A key the gateway has not seen yet: looking it up needs the database.
                v1 = await answer(gw, "POST", "/v1/chat/completions", json=CHAT, headers=bearer(unseen))
                assert_unavailable(*v1, *hidden)
            # A key it knows: the hold on its credits needs the database (the credits plugin's own 503).
            v1 = await answer(gw, "POST", "/v1/chat/completions", json=CHAT, headers=bearer(secret))
            assert_unavailable(*v1, *hidden, code="billing_unavailable")
            me = await answer(gw, "GET", "/api/me", headers=user.headers)
            assert_unavailable(*me, *hidden)
            login = await answer(gw, "POST", "/api/auth/login", json={"login": user.email, "password": user.password})
            assert_unavailable(*login, *hidden)
        finally:
            limited_user.limit(0)
            holder.close()

        for key in (secret, unseen):
            status, body, _, _ = await answer(gw, "POST", "/v1/chat/completions", json=CHAT, headers=bearer(key))
            assert status == 200, body
        status, body, _, _ = await answer(gw, "GET", "/api/me", headers=user.headers)
        assert (status, body["user"]["email"]) == (200, user.email)


async def test_sqlite_locked_past_its_busy_timeout_is_503_on_api_until_the_lock_goes(
    serve: Any, ollama: Any, sqlite_url: str
) -> None:
    """SQLite's outage: another process (a backup, a stuck shell) keeps the write lock past the busy timeout
    (10 s). (A vanished file is none: the open connections keep working on it. /v1's writes are the credits
    hold, which the credits plugin already answers 503 `billing_unavailable`, after retrying the busy lock.)"""
    async with serve(auth_config(ollama, sqlite_url)) as gw:
        holder = sqlite3.connect(sqlite_url.removeprefix("sqlite+aiosqlite:///"))
        try:
            holder.execute("BEGIN IMMEDIATE")
            registering = {"name": "Late User", "email": unique_email(), "phone": unique_phone(), "password": PASSWORD}
            status, body, headers, raw = await answer(gw, "POST", "/api/auth/register", json=registering)
            assert_unavailable(status, body, headers, raw, "locked")
        finally:
            holder.rollback()
            holder.close()
        status, body, _, _ = await answer(gw, "POST", "/api/auth/register", json=registering)
        assert (status, body["user"]["email"]) == (201, registering["email"])


async def test_only_connection_failures_count_as_an_outage(db_url: str) -> None:
    """A server nobody answers at is an outage; a query the database rejects stays an error (a 500)."""
    unreachable = Database(db_url.replace("127.0.0.1:3306", "127.0.0.1:1") if "mysql" in db_url else db_url)
    db = Database(db_url)
    try:
        if "mysql" in db_url:
            with pytest.raises(Exception) as refused:
                await unreachable.ping()
            assert outage_cause(refused.value) == "mysql OperationalError 2003"
        async with db.connect() as conn:
            with pytest.raises(Exception) as rejected:
                await conn.execute(sa.text("SELECT * FROM no_such_table"))
        assert outage_cause(rejected.value) is None
    finally:
        await unreachable.close()
        await db.close()
