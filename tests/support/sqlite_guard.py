"""A pytest plugin (tests/conftest.py loads it): a test that leaves a SQLite connection's worker thread
running once its event loop has closed fails, itself and by name.

Such a thread answers a closed loop when its query ends ("Event loop is closed" from aiosqlite's
`call_soon_threadsafe`). pytest reports a thread's exception in the test phase during which it was raised,
checking at the end of each phase (a `trylast` hook of its own). The check here used to be a `trylast`
teardown hook in the conftest, which pytest calls after its own: a thread that raised while the check
waited for it was reported at the setup of whichever test ran next. It is now an autouse fixture: set up
before the test's event loop, so torn down after the loop closes, inside the test's teardown, before
pytest's check. Any thread left then either raises while waited for here (reported as this test's) or
is still running once the wait is over (this test fails naming it, in a teardown hook that runs after
pytest's check); the connection it leaves unclosed is collected here too, so its finalizer's
ResourceWarning is this test's as well.
"""

from __future__ import annotations

import contextlib
import gc
import sys
import threading
import time
from collections.abc import Iterator

import aiosqlite
import aiosqlite.core
import pytest

from edge.db import CLOSE_WAIT_SECONDS


def sqlite_workers() -> set[threading.Thread]:
    """The running worker threads of aiosqlite connections: one per open SQLite connection."""
    worker = aiosqlite.core._connection_worker_thread
    return {thread for thread in threading.enumerate() if getattr(thread, "_target", None) is worker}


_LEFT_OPEN = pytest.StashKey[list[str]]()


@pytest.fixture(autouse=True)
def sqlite_connections_end_with_their_test(request: pytest.FixtureRequest) -> Iterator[None]:
    before = sqlite_workers()
    yield
    if left := sqlite_workers() - before:
        # Long enough for a query that waits on SQLite's busy timeout: its thread raises now, in this test.
        deadline = time.monotonic() + CLOSE_WAIT_SECONDS
        for thread in left:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        request.node.stash[_LEFT_OPEN] = sorted(thread.name for thread in left if thread.is_alive())
        _close_orphans(left)


def _close_orphans(threads: set[threading.Thread]) -> None:
    """Close the SQLite connection of each of `threads` that died raising (the test fails with its exception):
    its stop request still sits in its queue, held there, with the connection, by the exception pytest keeps
    until it has reported it, so the connection would be collected, and its finalizer warn, in a later test."""
    for found in gc.get_objects():
        if not isinstance(found, aiosqlite.Connection) or found._thread not in threads:
            continue
        if not found._thread.is_alive() and (connection := found._connection) is not None:
            found._connection = None
            with contextlib.suppress(Exception):
                connection.close()


def _finalize_left_connections() -> list[str]:
    """Collect garbage now; what the finalizers raised (a ResourceWarning is an error in this suite)."""
    raised: list[str] = []
    hook = sys.unraisablehook
    sys.unraisablehook = lambda what: raised.append(f"{what.exc_type.__name__}: {what.exc_value}")
    try:
        gc.collect()
    finally:
        sys.unraisablehook = hook
    return raised


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    """Once pytest has checked the test's thread exceptions (while it holds one, the connection stays
    referenced): a thread that raised never closed its connection, whose finalizer warns (ResourceWarning)
    whenever it is collected. It is collected now, so the warning is this test's too, and the test fails
    naming what it left."""
    try:
        result = yield
    except BaseException:
        if _LEFT_OPEN in item.stash:
            _finalize_left_connections()  # the test has failed already, with the thread's own exception
        raise
    if (still := item.stash.get(_LEFT_OPEN, None)) is not None:
        finalized = _finalize_left_connections()
        if still or finalized:
            pytest.fail(
                f"{item.nodeid} left {len(still)} SQLite connection(s) open after its event loop closed "
                f"(close the Database, stop the Gateway): {', '.join(still + finalized)}",
                pytrace=False,
            )
    return result
