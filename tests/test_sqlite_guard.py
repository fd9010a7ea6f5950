"""The guard against SQLite connections outliving their test (tests/support/sqlite_guard.py) fails the test
that leaks, by name, and never the test that runs next: run on a small suite of its own in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

SUITE = '''
import asyncio
import time

import aiosqlite


async def test_leaves_a_query_running() -> None:
    """Force-closed as SQLAlchemy's terminate does, while its thread still runs a query: the thread answers
    the test's loop after it closed."""
    conn = await aiosqlite.connect(":memory:")
    conn._tx.put_nowait((asyncio.get_running_loop().create_future(), lambda: time.sleep(1.0)))
    conn.stop()


def test_runs_next() -> None:
    pass


async def test_never_closes_its_connection() -> None:
    global KEPT
    KEPT = await aiosqlite.connect(":memory:")


async def test_runs_last() -> None:
    await KEPT.close()  # its thread is not a daemon: left running, the process could not exit
'''
CONFTEST = """
import tests.support.sqlite_guard as guard

guard.CLOSE_WAIT_SECONDS = 3.0  # a connection nobody closes is waited for this long
"""


def test_the_leaking_test_fails_by_name_and_the_next_one_passes(tmp_path: Path) -> None:
    (tmp_path / "test_suite.py").write_text(SUITE)
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\nfilterwarnings = error\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-rA", "-p", "no:cacheprovider", "-p", "tests.support.sqlite_guard"],
        check=False,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = result.stdout.splitlines()
    outcomes = sorted(line.split(" - ")[0] for line in lines if line.startswith(("PASSED ", "ERROR ", "FAILED ")))
    assert outcomes == [
        "ERROR test_suite.py::test_leaves_a_query_running",
        "ERROR test_suite.py::test_never_closes_its_connection",
        "PASSED test_suite.py::test_leaves_a_query_running",
        "PASSED test_suite.py::test_never_closes_its_connection",
        "PASSED test_suite.py::test_runs_last",
        "PASSED test_suite.py::test_runs_next",
    ], result.stdout
    assert "Event loop is closed" in result.stdout
    assert "test_suite.py::test_never_closes_its_connection left 1 SQLite connection(s) open" in result.stdout
