"""What the limiter knows about its shared storage being down: when to try it again, when to log."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from edge.db import redact

log = logging.getLogger("resayil.ratelimit")


class Outage:
    """A circuit breaker for the rate-limit storage with a log that speaks at most once per interval.

    After a failure the storage is skipped for `retry_seconds`, so a dead Redis costs one connection
    attempt per interval rather than a timeout on every request.
    """

    def __init__(
        self,
        *,
        url: str,
        mode: str,
        retry_seconds: float,
        log_interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = redact(url)
        self.mode = mode
        self.retry_seconds = retry_seconds
        self.log_interval = log_interval
        self.clock = clock
        self.down = False
        self.error: str | None = None
        self._retry_at = 0.0
        self._logged_at: float | None = None
        self._recovery_logged_at: float | None = None
        self._unlogged = 0

    def skipping(self) -> bool:
        return self.down and self.clock() < self._retry_at

    def failed(self, exc: BaseException) -> None:
        now = self.clock()
        self.down = True
        self.error = type(exc).__name__
        self._retry_at = now + self.retry_seconds
        self._unlogged += 1
        if self._logged_at is None or now - self._logged_at >= self.log_interval:
            log.error(
                "rate-limit storage unreachable",
                extra={
                    "fields": {"redis": self.url, "error": self.error, "mode": self.mode, "failures": self._unlogged}
                },
            )
            self._logged_at = now
            self._unlogged = 0

    def recovered(self) -> None:
        if not self.down:
            return
        now = self.clock()
        if self._recovery_logged_at is None or now - self._recovery_logged_at >= self.log_interval:
            # A flapping Redis must not flood the log with recoveries either.
            log.warning("rate-limit storage reachable again", extra={"fields": {"redis": self.url}})
            self._recovery_logged_at = now
        self.down = False
        self.error = None
