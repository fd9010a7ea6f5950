"""Database failures that pass.

- A transaction the server rolled back for a passing reason (a deadlock or a lock-wait timeout on
  MariaDB/MySQL, a busy lock on SQLite) is simply run again (`retrying`).
- A database that refuses or drops connections (too many connections, unreachable, gone away, killed, a
  pool with no connection to give, a SQLite file that cannot be opened) is a temporary outage: the client
  is told 503 `database_unavailable` with `retry-after` (`outage_cause`), never a 500, a traceback
  or the driver's message.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pymysql
from sqlalchemy import exc as sa_exc

from edge.errors import ServiceUnavailable

T = TypeVar("T")

# Deadlock found, lock wait timeout exceeded: the server rolled the whole transaction back.
MYSQL_TRANSIENT = frozenset({1205, 1213})
ATTEMPTS = 5
# The server cannot take or keep the connection: too many connections (1040), the user's connection limit
# (1203) or hourly limits (1226), shutting down (1053), connection killed (1927), disconnected for
# inactivity (4031); and the client's own: cannot connect by socket (2002) or TCP (2003), gone away (2006),
# lost during a query (2013).
MYSQL_OUTAGE = frozenset({1040, 1053, 1203, 1226, 1927, 4031, 2002, 2003, 2006, 2013})
# SQLite's primary result codes: the file cannot be opened (its disk or directory is gone), or another
# connection kept the lock past the busy timeout.
SQLITE_OUTAGE = frozenset({14, 5})  # SQLITE_CANTOPEN, SQLITE_BUSY
RETRY_AFTER_SECONDS = 2
# What an outage is raised as: SQLAlchemy's errors (the pool's timeout, the drivers' errors wrapped), and
# the drivers' own (edge.procedures calls aiomysql directly).
DATABASE_ERRORS: tuple[type[Exception], ...] = (
    sa_exc.DBAPIError,
    sa_exc.TimeoutError,
    pymysql.err.OperationalError,
    pymysql.err.InterfaceError,
    sqlite3.OperationalError,
)


def mysql_transient(exc: BaseException | None) -> bool:
    """A MariaDB/MySQL driver error whose code says the transaction was rolled back and may simply run again."""
    code = exc.args[0] if exc is not None and exc.args else None
    return isinstance(code, int) and code in MYSQL_TRANSIENT


async def retrying(work: Callable[[], Awaitable[T]], *, transient: Callable[[BaseException], bool]) -> T:
    """`work()`, run again (up to ATTEMPTS times, after a short jittered pause) while it fails transiently."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return await work()
        except Exception as exc:
            if attempt == ATTEMPTS or not transient(exc):
                raise
        await asyncio.sleep(0.005 * attempt + random.random() * 0.01)
    raise AssertionError("unreachable")


def _cause(exc: BaseException) -> str | None:
    """What about `exc` itself says outage, for a log line (never its message: SQLAlchemy's holds the
    statement and its parameters); None when nothing does."""
    name = type(exc).__name__
    if isinstance(exc, sa_exc.TimeoutError):  # the pool had no connection to give in time
        return "pool timeout"
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return f"{name}: connection lost"
    if isinstance(exc, sqlite3.OperationalError):
        code = getattr(exc, "sqlite_errorcode", -1) & 0xFF
        return f"sqlite {name} {code}" if code in SQLITE_OUTAGE else None
    # pymysql's (and so aiomysql's) OperationalError and InterfaceError: (code, message).
    code = exc.args[0] if type(exc).__module__.startswith("pymysql") and exc.args else None
    return f"mysql {name} {code}" if isinstance(code, int) and code in MYSQL_OUTAGE else None


def outage_cause(exc: BaseException) -> str | None:
    """Whether `exc` (or what it wraps: SQLAlchemy's `.orig`, a cause or context) says the database refused
    or dropped the connection, as opposed to a query it ran and rejected: what said so, else None."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if cause := _cause(current):
            return cause
        orig = current.orig if isinstance(current, sa_exc.DBAPIError) else None
        pending.extend((orig, current.__cause__, current.__context__))
    return None


def database_outage(exc: BaseException) -> bool:
    return outage_cause(exc) is not None


def database_unavailable() -> ServiceUnavailable:
    """The 503 a client gets for a database outage (`outage_cause`)."""
    return ServiceUnavailable(
        "The service's database is unavailable for a moment; retry the request shortly.",
        code="database_unavailable",
        headers={"retry-after": str(RETRY_AFTER_SECONDS)},
    )
