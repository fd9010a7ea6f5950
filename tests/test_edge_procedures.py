"""Stored-procedure calls on MariaDB (edge/procedures.py): one round trip, a reused connection, recovery from
killed connections, failed calls and deadlocks. The credits tests cover the money procedures themselves."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pymysql
import pytest

from edge import procedures as procedures_module
from edge.db import Database
from edge.procedures import Procedures
from tests.conftest import MARIADB

PROCEDURES = {
    "test_echo": "CREATE PROCEDURE test_echo(IN p_text VARCHAR(64), IN p_n BIGINT) "
    "SELECT p_text, p_n + 1, CONNECTION_ID()",
    "test_fail": "CREATE PROCEDURE test_fail() SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'refused on purpose'",
    # Reports a deadlock until it has been called three times (the counter survives: autocommit).
    "test_flaky": """CREATE PROCEDURE test_flaky()
        BEGIN
            DECLARE v_n INT;
            UPDATE test_calls SET n = n + 1;
            SELECT n INTO v_n FROM test_calls;
            IF v_n < 3 THEN
                SIGNAL SQLSTATE '40001' SET MYSQL_ERRNO = 1213, MESSAGE_TEXT = 'Deadlock found';
            END IF;
            SELECT v_n;
        END""",
}


@pytest.fixture()
def with_procedures(mariadb_database: str) -> Iterator[str]:
    name = mariadb_database.rsplit("/", 1)[1]
    conn = pymysql.connect(**MARIADB, database=name, autocommit=True)
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS test_calls (n INT NOT NULL)")
        cur.execute("DELETE FROM test_calls")
        cur.execute("INSERT INTO test_calls VALUES (0)")
        for proc, text in PROCEDURES.items():
            cur.execute(f"DROP PROCEDURE IF EXISTS {proc}")
            cur.execute(text)
    conn.close()
    yield mariadb_database
    conn = pymysql.connect(**MARIADB, database=name, autocommit=True)  # a test may have killed the first
    with conn.cursor() as cur:
        for proc in PROCEDURES:
            cur.execute(f"DROP PROCEDURE IF EXISTS {proc}")
        cur.execute("DROP TABLE IF EXISTS test_calls")
    conn.close()


def _kill_all(database_url: str) -> int:
    name = database_url.rsplit("/", 1)[1]
    admin = pymysql.connect(**MARIADB, autocommit=True)
    killed = 0
    with admin.cursor() as cur:
        cur.execute("SELECT id FROM information_schema.processlist WHERE db=%s AND id <> CONNECTION_ID()", (name,))
        for (conn_id,) in cur.fetchall():
            cur.execute(f"KILL {int(conn_id)}")
            killed += 1
    admin.close()
    return killed


async def test_a_call_returns_its_row_and_reuses_one_connection(with_procedures: str) -> None:
    procs = Procedures(with_procedures)
    try:
        first = await procs.call("test_echo", ("مرحبا", 41))
        second = await procs.call("test_echo", ("hello", -1))
        assert first is not None and first[:2] == ("مرحبا", 42)
        assert second is not None and second[:2] == ("hello", 0)
        assert first[2] == second[2], "the second call should reuse the first call's connection"
    finally:
        await procs.close()


async def test_killed_connections_are_replaced_after_idling(
    with_procedures: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(procedures_module, "PING_IDLE_SECONDS", 0.05)
    procs = Procedures(with_procedures)
    try:
        before = await procs.call("test_echo", ("a", 1))
        assert _kill_all(with_procedures) >= 1
        await asyncio.sleep(0.1)
        after = await procs.call("test_echo", ("b", 2))
        assert before is not None and after is not None
        assert after[:2] == ("b", 3) and after[2] != before[2]
    finally:
        await procs.close()


async def test_a_failing_procedure_raises_and_the_next_call_works(with_procedures: str) -> None:
    procs = Procedures(with_procedures)
    try:
        with pytest.raises(pymysql.err.OperationalError, match="refused on purpose"):
            await procs.call("test_fail", ())
        assert await procs.call("test_echo", ("ok", 0)) is not None
    finally:
        await procs.close()


async def test_a_deadlock_is_retried_until_the_procedure_succeeds(with_procedures: str) -> None:
    procs = Procedures(with_procedures)
    try:
        assert await procs.call("test_flaky", ()) == (3,)
    finally:
        await procs.close()


async def test_concurrent_calls_never_exceed_the_pool_size(with_procedures: str) -> None:
    procs = Procedures(with_procedures, size=3)
    try:
        rows = await asyncio.gather(*(procs.call("test_echo", (str(i), i)) for i in range(40)))
        assert sorted(r[1] for r in rows if r is not None) == list(range(1, 41))
        assert len({r[2] for r in rows if r is not None}) <= 3
    finally:
        await procs.close()


async def test_the_database_has_procedures_only_on_mariadb(db_url: str) -> None:
    db = Database(db_url)
    try:
        assert (db.procedures is None) == db.is_sqlite
    finally:
        await db.close()
