"""Closing the database waits for SQLite's worker threads, so none outlives the event loop it answers to."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import sqlalchemy as sa

from edge.db import Database
from tests.support.sqlite_guard import sqlite_workers

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


async def test_a_connection_whose_opening_is_cancelled_is_finished_before_close_returns(tmp_path: Path) -> None:
    """A job stopped with the gateway while the pool opens a connection: the opening is cancelled while its
    worker thread waits for SQLite's lock (switching a new file to WAL takes it), so SQLAlchemy never gets
    the connection. Its thread is the database's all the same: `close` returns only once it has ended."""
    path = tmp_path / "fresh.db"
    holder = sqlite3.connect(path, check_same_thread=False)
    holder.execute("CREATE TABLE t (id INTEGER)")
    holder.execute("BEGIN")
    holder.execute("SELECT count(*) FROM t").fetchall()  # a reader: `PRAGMA journal_mode=WAL` waits for it
    before = sqlite_workers()
    db = Database(f"sqlite+aiosqlite:///{path}")
    opening = asyncio.ensure_future(db.ping())
    await asyncio.sleep(0.3)
    assert [worker for worker in sqlite_workers() - before if worker.is_alive()], "the opening should be waiting"
    for _ in range(2):
        opening.cancel()
        await asyncio.wait([opening], timeout=0.2)
    release = threading.Timer(0.5, holder.rollback)
    release.start()
    try:
        await db.close()
        assert not [worker for worker in sqlite_workers() - before if worker.is_alive()]
    finally:
        release.join()
        holder.close()
    assert opening.cancelled()
