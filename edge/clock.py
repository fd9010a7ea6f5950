"""The clock the gateway and its plugins read, so a test can move time instead of sleeping through it.

Production uses `SystemClock`: `time.time` and `time.monotonic` themselves, one method call per read.
Code that decides an expiry in Python (sessions, key expiry, per-key intervals) reads `gateway.clock`;
an expiry that Redis enforces with its own TTL runs on Redis's clock and cannot be moved this way.
"""

from __future__ import annotations

from datetime import UTC, datetime
from time import monotonic as _monotonic
from time import time as _time
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float:
        """Wall-clock seconds since the epoch (UTC)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back, for intervals within one process."""
        ...


class SystemClock:
    """The real clocks, as the builtins themselves (no Python frame in between)."""

    time = staticmethod(_time)
    monotonic = staticmethod(_monotonic)


SYSTEM = SystemClock()


def utc_now(clock: Clock = SYSTEM) -> datetime:
    """Now on `clock`, as the database keeps instants: UTC without a tzinfo."""
    return datetime.fromtimestamp(clock.time(), UTC).replace(tzinfo=None)
