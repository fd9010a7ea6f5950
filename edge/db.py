"""One data layer for SQLite (embedded default) and MariaDB/MySQL: SQLAlchemy Core's async engine.

No ORM sessions: plugins build Core statements against their own `Table`s and run them through
`Database.begin()` (a transaction) or `Database.connect()`.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

_SAFE_URL = re.compile(r"//([^:/@]*):([^@]+)@")


def redact(url: str) -> str:
    """A database or Redis URL with its password replaced, for logs and errors."""
    return _SAFE_URL.sub(r"//\1:***@", url)


def sync_url(url: str) -> str:
    """The synchronous driver's URL, for migrations (Alembic runs synchronously)."""
    return url.replace("sqlite+aiosqlite://", "sqlite://").replace("mysql+aiomysql://", "mysql+pymysql://")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers work beside the one writer; busy_timeout waits for the lock instead of failing.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, pool_size=pool_size, max_overflow=10)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    query = dict(parsed.query)
    query.setdefault("charset", "utf8mb4")
    return create_async_engine(
        parsed.set(query=query),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_recycle=1800,
        pool_pre_ping=True,
        isolation_level="READ COMMITTED",
    )


class Database:
    """The shared pool, opened in the lifespan and handed to plugins through the gateway."""

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = url
        self.engine = make_engine(url, pool_size=pool_size)
        self.dialect = self.engine.dialect.name  # "sqlite" or "mysql"

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        """A connection inside a transaction, committed on success and rolled back on error."""
        async with self.engine.begin() as conn:
            yield conn

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as conn:
            yield conn

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))

    async def close(self) -> None:
        await self.engine.dispose()
