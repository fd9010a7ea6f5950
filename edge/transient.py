"""Running a database transaction again when the server rolled it back for a reason that passes:
a deadlock or a lock-wait timeout on MariaDB/MySQL, a busy lock on SQLite."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

# Deadlock found, lock wait timeout exceeded: the server rolled the whole transaction back.
MYSQL_TRANSIENT = frozenset({1205, 1213})
ATTEMPTS = 5


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
