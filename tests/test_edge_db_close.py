"""Closing the database waits for SQLite's worker threads, so none outlives the event loop it answers to."""

from __future__ import annotations

import asyncio
import sqlite3
import threading

import sqlalchemy as sa

from edge.db import Database
from tests.conftest import sqlite_workers

scratch = sa.Table("edge_close_scratch", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True))


async def test_a_query_cancelled_while_sqlite_is_busy_is_finished_before_close_returns(sqlite_url: str) -> None:
    """A job cancelled by the gateway's stop (`JobRunner.stop` cancels twice) while its query waits for
    SQLite's lock: the connection is force-closed without waiting, and its worker thread finishes the
    query later. Once `close` returns the thread must be done, or it reports to a closed loop."""
    before = sqlite_workers()
    db = Database(sqlite_url)
    async with db.begin() as conn:
        await conn.run_sync(scratch.create)
    holder = sqlite3.connect(sqlite_url.removeprefix("sqlite+aiosqlite:///"), check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # the write lock: the insert below waits (busy_timeout)

    async def insert() -> None:
        async with db.begin() as conn:
            await conn.execute(scratch.insert().values(id=1))

    writing = asyncio.ensure_future(insert())
    await asyncio.sleep(0.2)
    for _ in range(2):
        writing.cancel()
        await asyncio.wait([writing], timeout=0.2)
    release = threading.Timer(0.5, holder.rollback)
    release.start()
    try:
        await db.close()
        assert not [worker for worker in sqlite_workers() - before if worker.is_alive()]
    finally:
        release.join()
        holder.close()
    assert writing.cancelled()
