"""One data layer for SQLite (embedded default) and MariaDB/MySQL: SQLAlchemy Core's async engine.

No ORM sessions: plugins build Core statements against their own `Table`s and run them through
`Database.begin()` (a transaction) or `Database.connect()`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite
import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from edge.procedures import PING_IDLE_SECONDS, Procedures

log = logging.getLogger("resayil.db")
# SQLite's busy_timeout (below) and a second: no query still runs after this, unless it never ends.
CLOSE_WAIT_SECONDS = 11.0
_SAFE_URL = re.compile(r"//([^:/@]*):([^@]+)@")
_IDLE_SINCE = "resayil_idle_since"
# Set on a connection whose transaction has just committed: it has nothing to roll back on return.
_CLEAN = "resayil_clean"


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


class SqliteWorkers:
    """The worker thread of every aiosqlite connection an engine opens, from the moment the connection object
    exists: a connection whose opening is cancelled (a job stopped with the gateway while its pool opened
    one) still has a thread that finishes the opening and answers the loop afterwards. Kept until each ends."""

    def __init__(self) -> None:
        self.threads: weakref.WeakSet[threading.Thread] = weakref.WeakSet()

    def connect(self, *args: Any, **kwargs: Any) -> aiosqlite.Connection:
        """SQLAlchemy's `async_creator_fn`: what its aiosqlite dialect does (it awaits the result), and the
        thread noted first."""
        connection = aiosqlite.connect(*args, **kwargs)
        connection._thread.daemon = True
        self.threads.add(connection._thread)
        return connection

    def running(self) -> list[threading.Thread]:
        return [thread for thread in self.threads if thread.is_alive()]


def _join(threads: list[threading.Thread], *, within: float) -> int:
    """Wait up to `within` seconds in all for `threads` to end; how many still run."""
    deadline = time.monotonic() + within
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    return sum(thread.is_alive() for thread in threads)


def _pool_events(engine: AsyncEngine) -> None:
    """Ping only connections that sat idle, and skip the rollback-on-return after a commit.

    Both were a round trip per transaction: SQLAlchemy rolls back every returned connection, even one whose
    transaction has just committed, and `pool_pre_ping` pings on every checkout.
    """
    pool = engine.sync_engine.pool
    dialect = engine.sync_engine.dialect

    def connect(dbapi_connection: Any, record: Any) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    def checkin(dbapi_connection: Any, record: Any) -> None:
        if record is not None:
            record.info[_IDLE_SINCE] = time.monotonic()

    def checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        since = record.info.get(_IDLE_SINCE)
        if since is not None and time.monotonic() - since < PING_IDLE_SECONDS:
            return
        try:
            dialect.do_ping(dbapi_connection)
        except Exception:
            # What pool_pre_ping does: drop every pooled connection older than now and connect afresh.
            raise exc.InvalidatePoolError() from None

    def reset(dbapi_connection: Any, record: Any, state: Any) -> None:
        if record is not None and record.info.pop(_CLEAN, False):
            return
        if state.asyncio_safe and not state.transaction_was_reset:
            dbapi_connection.rollback()

    event.listen(pool, "connect", connect)
    event.listen(pool, "checkin", checkin)
    event.listen(pool, "checkout", checkout)
    event.listen(pool, "reset", reset)


def make_engine(url: str, *, pool_size: int = 10, workers: SqliteWorkers | None = None) -> AsyncEngine:
    """The async engine for `url`; on SQLite, `workers` notes every connection's thread."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        connect_args = {"async_creator_fn": workers.connect} if workers is not None else {}
        engine = create_async_engine(url, pool_size=pool_size, max_overflow=10, connect_args=connect_args)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    query = dict(parsed.query)
    query.setdefault("charset", "utf8mb4")
    engine = create_async_engine(
        parsed.set(query=query),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_recycle=1800,
        pool_reset_on_return=None,  # _pool_events rolls back instead, unless the transaction committed
        isolation_level="READ COMMITTED",
    )
    _pool_events(engine)
    return engine


class Database:
    """The shared pool, opened in the lifespan and handed to plugins through the gateway."""

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = url
        self._workers = SqliteWorkers()
        self.engine = make_engine(url, pool_size=pool_size, workers=self._workers)
        self.dialect = self.engine.dialect.name  # "sqlite" or "mysql"
        # MariaDB/MySQL only: stored procedures for the request path's money transactions, one round trip each.
        self.procedures: Procedures | None = None if self.is_sqlite else Procedures(url, size=pool_size)
        # Connections inside `begin`, by id: what each wants run once its transaction has committed.
        self._open: dict[int, list[Callable[[], None]] | None] = {}

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        """A connection inside a transaction, committed on success and rolled back on error."""
        async with self.engine.connect() as conn:
            key = id(conn)
            self._open[key] = None
            try:
                async with conn.begin():
                    yield conn
            finally:
                after = self._open.pop(key, None)
            if not self.is_sqlite:
                conn.info[_CLEAN] = True
        for callback in after or ():
            callback()

    def after_commit(self, conn: AsyncConnection, callback: Callable[[], None]) -> bool:
        """Call `callback` (quick, synchronous) once the transaction `conn` is in commits, never when it
        rolls back. False when `conn` did not come from `begin`: the caller cannot know when it commits."""
        key = id(conn)
        if key not in self._open:
            return False
        callbacks = self._open[key]
        if callbacks is None:
            callbacks = self._open[key] = []
        callbacks.append(callback)
        return True

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as conn:
            yield conn

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))

    async def close(self) -> None:
        """Close the pools. On SQLite, return only once every connection's worker thread has ended: a query
        cancelled mid-flight (a job stopped with the gateway) is force-closed without waiting, and its thread
        finishes the query later; should the event loop close first, the thread's answer raises "Event loop
        is closed" in it. A thread still running after SQLite's busy timeout (a connection someone never
        returned) is logged and left."""
        if self.procedures is not None:
            await self.procedures.close()
        await self.engine.dispose()
        if running := self._workers.running():
            left = await asyncio.to_thread(_join, running, within=CLOSE_WAIT_SECONDS)
            if left:
                log.warning("SQLite connections still open after the database closed: %d", left)
