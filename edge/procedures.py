"""Stored-procedure calls on MariaDB/MySQL: one round trip for a whole money transaction.

A hold or a settlement through SQLAlchemy is several statements, each a round trip while the account's
balance row stays locked, and each costing the worker 150-200 µs of CPU in the async adapter; under load
every account's requests queue on that lock. A procedure runs the same transaction inside the server:
the worker sends one CALL and reads one row.

The calls use their own small pool of plain aiomysql connections in autocommit mode (the procedure
commits or rolls back itself). As in `edge.db`, a connection idle for more than a second is pinged
before use and replaced when the ping fails, so a server restart or a killed connection is not an
error for the next caller.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import aiomysql
import pymysql
from sqlalchemy.engine import make_url

from edge.transient import mysql_transient, retrying

# A connection used this recently was working a moment ago: pinging it again before every use (SQLAlchemy's
# pool_pre_ping) cost one round trip per transaction. One idle longer is pinged first. Both pools use it.
PING_IDLE_SECONDS = 1.0


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, pymysql.err.OperationalError) and mysql_transient(exc)


class Procedures:
    """CALL stored procedures over a pool of at most `size` connections to the database at `url`."""

    def __init__(self, url: str, *, size: int = 10, connect_timeout: float = 5.0) -> None:
        parsed = make_url(url)
        self._params: dict[str, Any] = {
            "host": parsed.host or "127.0.0.1",
            "port": parsed.port or 3306,
            "user": parsed.username or "root",
            "password": parsed.password or "",
            "db": parsed.database,
            "charset": str(parsed.query.get("charset", "utf8mb4")),
            "autocommit": True,
            "connect_timeout": connect_timeout,
            "init_command": "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
        }
        self._idle: deque[tuple[aiomysql.Connection, float]] = deque()
        self._slots = asyncio.Semaphore(size)
        self._closed = False

    async def call(self, name: str, args: Sequence[Any]) -> tuple[Any, ...] | None:
        """`CALL name(args…)` and the first row of its first result set (None when it returned no row).

        Every procedure called here rolls back on error, so one reporting a deadlock is called again."""
        return await retrying(lambda: self._call_once(name, args), transient=_transient)

    async def _call_once(self, name: str, args: Sequence[Any]) -> tuple[Any, ...] | None:
        placeholders = ", ".join(["%s"] * len(args))
        async with self._slots:
            conn = await self._acquire()
            try:
                async with conn.cursor() as cur:
                    await cur.execute(f"CALL {name}({placeholders})", tuple(args))
                    row: tuple[Any, ...] | None = await cur.fetchone()
            except BaseException:
                # A failed or cancelled call may leave unread packets behind: never reuse that connection.
                conn.close()
                raise
            self._idle.append((conn, time.monotonic()))
            return row

    async def _acquire(self) -> aiomysql.Connection:
        while self._idle:
            conn, since = self._idle.pop()  # the most recently used: the one most likely still alive
            if time.monotonic() - since < PING_IDLE_SECONDS:
                return conn
            try:
                await conn.ping(reconnect=False)
                return conn
            except Exception:
                conn.close()
        if self._closed:
            raise RuntimeError("the procedure pool is closed")
        return await aiomysql.connect(**self._params)

    async def close(self) -> None:
        self._closed = True
        while self._idle:
            conn, _ = self._idle.pop()
            conn.close()
