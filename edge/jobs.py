"""Scheduled jobs: the periodic work plugins return from `resayil_jobs`, run by the gateway while it serves.

A job is due every `every_seconds` or daily at `daily_at` ("HH:MM" in the config's `timezone`). Due
instants are fixed on the wall clock, the same on every worker and host: an interval job is due at each
multiple of its interval since the Unix epoch, a daily job at that local time each day.

What stays true:
- A `single` job's due run happens on exactly one worker across all workers and hosts. With Redis the
  worker claims it first (`edge/joblock.py`: the run's instant is marked once, and the job's lock, which
  expires unless renewed, is held while it runs), so a run never starts twice and never overlaps the run
  before it. Without Redis the state is in-process, so there is one worker (the gateway refuses more), and
  it just runs.
- When the worker holding the lock dies, the lock expires within half an interval; the other workers keep
  trying a due run that found it held, so one of them takes over within one interval of the death.
- A job that is not `single` runs in every worker.
- Every run is logged with its job, due instant, duration and outcome; a failing run is logged with its
  exception and the schedule goes on. A run that outlasts its interval makes the due runs it overlaps
  wait or be skipped (logged), never run twice.
- Stopping the gateway cancels every schedule and a run in progress; a held lock is released.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
import zoneinfo
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from datetime import time as clock_time
from typing import TYPE_CHECKING

from edge.joblock import JobLock, lock_seconds
from edge.settings import ConfigError

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from edge.gateway import Gateway

log = logging.getLogger("resayil.jobs")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.:-]{0,63}$")
_DAILY = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")
DAY_SECONDS = 86400.0
# A wait is cut into naps no longer than this, so a wall clock that is set back or forward cannot delay a
# run by much more than a minute.
MAX_NAP = 60.0

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class Job:
    """Periodic work: `run(gateway)` every `every_seconds`, or daily at `daily_at` ("HH:MM", the config's
    `timezone`). `single`: exactly one worker across all workers and hosts runs each due run; else every
    worker runs it."""

    name: str
    run: Callable[[Gateway], Awaitable[None]]
    every_seconds: float | None = None
    daily_at: str | None = None
    single: bool = True

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ConfigError(f"job {self.name!r}: a name is up to 64 of a-z, 0-9, '_', '.', ':', '-'")
        if (self.every_seconds is None) == (self.daily_at is None):
            raise ConfigError(f"job {self.name!r}: give exactly one of every_seconds and daily_at")
        if self.every_seconds is not None and not 0 < self.every_seconds < math.inf:
            raise ConfigError(f"job {self.name!r}: every_seconds must be a positive number")
        if self.daily_at is not None and not _DAILY.match(self.daily_at):
            raise ConfigError(f"job {self.name!r}: daily_at must be a time HH:MM (00:00 to 23:59)")

    @property
    def period(self) -> float:
        return self.every_seconds if self.every_seconds is not None else DAY_SECONDS

    def next_due(self, after: float, tz: zoneinfo.ZoneInfo) -> float:
        """The first due instant (Unix seconds) strictly after `after`."""
        if self.every_seconds is not None:
            return (math.floor(after / self.every_seconds) + 1) * self.every_seconds
        assert self.daily_at is not None
        at = clock_time(int(self.daily_at[:2]), int(self.daily_at[3:]))
        day = datetime.fromtimestamp(after, tz).date()
        # A local time skipped by a DST change resolves to the instant after the gap; a repeated one to its
        # first occurrence: once a day either way.
        while (due := datetime.combine(day, at, tz).timestamp()) <= after:
            day += timedelta(days=1)
        return due

    def describe(self, tz: zoneinfo.ZoneInfo) -> str:
        if self.every_seconds is not None:
            return f"every {self.every_seconds:g}s"
        return f"daily at {self.daily_at} {tz.key}"


def collect(gateway: Gateway) -> tuple[Job, ...]:
    """Every enabled plugin's jobs, in hook order; a name given twice or a non-Job stops startup."""
    jobs: dict[str, Job] = {}
    for group in gateway.chain.call("resayil_jobs", gateway=gateway):
        for job in group or ():
            if not isinstance(job, Job):
                raise ConfigError(f"resayil_jobs: expected edge.jobs.Job items, got {type(job).__name__}")
            if job.name in jobs:
                raise ConfigError(f"job {job.name!r}: two plugins contribute a job of this name")
            jobs[job.name] = job
    return tuple(jobs.values())


def _iso(instant: float | None) -> str | None:
    return None if instant is None else datetime.fromtimestamp(instant, UTC).isoformat(timespec="milliseconds")


class JobRunner:
    """Runs each job on its schedule in this worker; single jobs' runs are claimed on `redis` when given."""

    def __init__(
        self,
        jobs: tuple[Job, ...],
        *,
        gateway: Gateway,
        redis: aioredis.Redis | None,
        tz: zoneinfo.ZoneInfo,
        clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.jobs = jobs
        self.gateway = gateway
        self.lock = JobLock(redis) if redis is not None else None
        self.tz = tz
        self.clock = clock
        self.sleep = sleep
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._schedule(job), name=f"job {job.name}") for job in self.jobs]

    async def stop(self) -> None:
        # Cancelled again until done: on Python 3.11 `asyncio.wait_for` (behind redis-py's socket timeouts)
        # loses a cancellation that arrives as its result does, and the task would carry on into its schedule.
        while pending := [task for task in self._tasks if not task.done()]:
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=1)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _schedule(self, job: Job) -> None:
        due = job.next_due(self.clock(), self.tz)
        while True:
            while (left := due - self.clock()) > 0:
                await self.sleep(min(left, MAX_NAP))
            await self._due(job, due)
            due = job.next_due(max(self.clock(), due), self.tz)

    async def _due(self, job: Job, due: float) -> None:
        if not job.single or self.lock is None:
            await self.run(job, due=due)
            return
        following = job.next_due(due, self.tz)
        poll = lock_seconds(job) / 3
        while True:
            try:
                claim = await self.lock.claim(job, due=due)
            except Exception:
                log.warning(
                    "job skipped: could not reach Redis to claim its run",
                    exc_info=True,
                    extra={"fields": {"job": job.name, "due": _iso(due)}},
                )
                return
            if claim == "claimed":
                await self.run(job, due=due, locked=True)
                return
            if claim == "done":
                return
            # Busy: an earlier run still holds the lock, running, or dead and its lock not yet expired.
            if self.clock() + poll >= following:
                log.info("job skipped: its previous run still holds the lock", extra={"fields": {"job": job.name}})
                return
            await self.sleep(poll)

    async def run(self, job: Job, *, due: float | None = None, locked: bool = False) -> bool:
        """Run `job` once now, log the run, and say whether it succeeded. With `locked`, this worker holds
        the job's lock: it is renewed while the job runs and released after."""
        renewal = asyncio.create_task(self.lock.keep(job)) if locked and self.lock is not None else None
        started = time.perf_counter()
        failure: BaseException | None = None
        outcome = "ok"
        try:
            await job.run(self.gateway)
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except Exception as exc:
            outcome, failure = "failed", exc
        finally:
            if renewal is not None:
                renewal.cancel()
                await asyncio.gather(renewal, return_exceptions=True)
            if locked and self.lock is not None:
                await self.lock.release(job)
            fields = {
                "job": job.name,
                "due": _iso(due),
                "duration_ms": round((time.perf_counter() - started) * 1000, 1),
                "outcome": outcome,
            }
            level = logging.INFO if outcome == "ok" else logging.ERROR if failure else logging.WARNING
            log.log(level, "job %s: %s", job.name, outcome, exc_info=failure, extra={"fields": fields})
        return failure is None
