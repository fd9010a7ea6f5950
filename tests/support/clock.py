"""A clock a test moves by hand: `serve(config, clock=clock)`, then `clock.advance(3)` where it would sleep.

Both readings start at the real ones and move together, so timestamps written to the database still look
like today's. Only expiry our code decides in Python follows it; a TTL Redis enforces does not.
"""

from __future__ import annotations

import time


class ManualClock:
    """`edge.clock.Clock` that stands still until `advance` is called."""

    def __init__(self) -> None:
        self._wall = time.time()
        self._mono = time.monotonic()

    def time(self) -> float:
        return self._wall

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        assert seconds >= 0, "time does not go back"
        self._wall += seconds
        self._mono += seconds
