"""audit_log is append-only in the database itself, on SQLite and MariaDB: the triggers of migration core_0003
refuse every UPDATE and DELETE (one row or all) while inserts go on, and the migration goes down and up."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy.exc import DBAPIError

from edge import migrate
from edge.audit import audit_log, record
from edge.db import sync_url
from tests.conftest import all_version_locations
from tests.support.matrix import matrix_config


async def test_the_database_refuses_to_change_or_remove_an_audit_row(db_url: str, ollama: Any, serve: Any) -> None:
    async with serve(matrix_config(ollama, db_url)) as served:
        db = served.gateway.database
        async with db.begin() as conn:
            first = await record(conn, actor_user_id=1, action="test.one", target="user:1", reason="r", ip=None)
        attempts = {
            "update": audit_log.update().where(audit_log.c.id == first).values(reason="rewritten"),
            "update all": audit_log.update().values(actor_user_id=2),
            "delete": audit_log.delete().where(audit_log.c.id == first),
            "delete all": audit_log.delete(),
        }
        refused = {}
        for name, statement in attempts.items():
            try:
                async with db.begin() as conn:
                    await conn.execute(statement)
            except DBAPIError as exc:
                refused[name] = "audit_log is append-only" in str(exc)
        async with db.begin() as conn:
            await record(conn, actor_user_id=1, action="test.two", target="user:1", reason=None, ip=None)
        async with db.connect() as conn:
            rows = (
                await conn.execute(sa.select(audit_log.c.action, audit_log.c.reason).order_by(audit_log.c.id))
            ).all()
    assert refused == dict.fromkeys(attempts, True)
    assert [tuple(r) for r in rows] == [("test.one", "r"), ("test.two", None)]


def test_the_append_only_migration_goes_down_and_up_again(db_url: str) -> None:
    """core_0003 down: audit rows can be changed again (the triggers are gone); up: refused again."""
    cfg = migrate.alembic_config(all_version_locations())
    engine = sa.create_engine(sync_url(db_url), future=True)
    row = {"at": datetime(2026, 1, 1), "action": "test.one", "target": "user:1", "details": "{}"}
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "core_0002")
            conn.execute(audit_log.insert().values(**row))
            assert conn.execute(audit_log.update().values(reason="changed")).rowcount == 1
            assert conn.execute(audit_log.delete()).rowcount == 1
    finally:
        engine.dispose()
        # Back at every head even when a step above failed: the MariaDB database serves the whole session.
        migrate.upgrade(db_url, all_version_locations())
    engine = sa.create_engine(sync_url(db_url), future=True)
    try:
        with engine.begin() as conn:
            conn.execute(audit_log.insert().values(**row))
        with pytest.raises(DBAPIError, match="audit_log is append-only"), engine.begin() as conn:
            conn.execute(audit_log.delete())
    finally:
        engine.dispose()
