"""The one data layer on both databases: pool, transactions, migrations to every head, readiness."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from edge import migrate
from edge.db import Database, redact
from tests.conftest import all_version_locations, base_config
from tests.support.auth import TokenAuth

scratch = sa.Table(
    "edge_scratch", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True), sa.Column("note", sa.String(64))
)


async def test_transactions_commit_and_roll_back_on_both_databases(db_url: str) -> None:
    db = Database(db_url)
    try:
        await db.ping()
        async with db.begin() as conn:
            await conn.run_sync(lambda sync: scratch.create(sync, checkfirst=True))
        async with db.begin() as conn:
            await conn.execute(scratch.insert().values(id=1, note="كتب"))
        with pytest.raises(RuntimeError):
            async with db.begin() as conn:
                await conn.execute(scratch.insert().values(id=2, note="rolled back"))
                raise RuntimeError("boom")
        async with db.connect() as conn:
            rows = (await conn.execute(sa.select(scratch.c.id, scratch.c.note))).all()
        assert [tuple(r) for r in rows] == [(1, "كتب")]
    finally:
        async with db.begin() as conn:
            await conn.run_sync(lambda sync: scratch.drop(sync, checkfirst=True))
        await db.close()


def test_migrations_reach_every_head(db_url: str) -> None:
    assert migrate.pending(db_url, all_version_locations()) == set()
    migrate.upgrade(db_url, all_version_locations())  # idempotent


async def test_readyz_reports_the_database(serve: Any, ollama: Any, db_url: str) -> None:
    cfg = base_config(ollama_url=ollama.url, database_url=db_url)
    async with serve(cfg, plugins=[TokenAuth()]) as gw, gw.request("GET", "/readyz") as r:
        body = await r.json()
    assert r.status == 200
    assert body["parts"]["database"] == {"ok": True, "dialect": "sqlite" if "sqlite" in db_url else "mysql"}


async def test_readyz_reports_redis(serve: Any, ollama: Any, sqlite_url: str, redis_url: str) -> None:
    cfg = base_config(ollama_url=ollama.url, database_url=sqlite_url, redis_url=redis_url)
    async with serve(cfg) as gw, gw.request("GET", "/readyz") as r:
        assert (await r.json())["parts"]["redis"] == {"ok": True}
    cfg = base_config(ollama_url=ollama.url, database_url=sqlite_url, redis_url="redis://127.0.0.1:1/0")
    async with serve(cfg) as gw, gw.request("GET", "/readyz") as r:
        assert r.status == 503
        assert (await r.json())["parts"]["redis"]["ok"] is False


def test_urls_are_redacted_for_logs() -> None:
    assert redact("mysql+aiomysql://resayil:hunter2@db:3306/r") == "mysql+aiomysql://resayil:***@db:3306/r"
    assert redact("redis://:pw@r:6379/0") == "redis://:***@r:6379/0"


async def test_a_pool_whose_connections_were_killed_recovers_after_idling(mariadb_database: str) -> None:
    import asyncio

    import pymysql

    from edge import db as db_module
    from tests.conftest import MARIADB

    db = Database(mariadb_database)
    try:
        await db.ping()
        name = mariadb_database.rsplit("/", 1)[1]
        admin = pymysql.connect(**MARIADB, autocommit=True)
        with admin.cursor() as cur:
            cur.execute("SELECT id FROM information_schema.processlist WHERE db=%s AND id <> CONNECTION_ID()", (name,))
            for (conn_id,) in cur.fetchall():
                cur.execute(f"KILL {int(conn_id)}")
        admin.close()
        # Idle past the threshold, the connection is pinged on checkout and the dead pool is replaced.
        await asyncio.sleep(db_module.PING_IDLE_SECONDS + 0.2)
        await db.ping()
        async with db.begin() as conn:
            assert (await conn.execute(sa.text("SELECT 41 + 1"))).scalar() == 42
    finally:
        await db.close()
