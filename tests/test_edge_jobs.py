"""Scheduled jobs (edge/jobs.py): schedules on an injected clock, failures logged and the schedule kept, the
CLI, a clean stop, and a single job's due run happening once across runners and processes, with another
process taking over within one interval when the one holding the lock is killed."""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
import yaml

from edge import config as config_module
from edge.gateway import Gateway
from edge.hookspecs import hookimpl
from edge.joblock import JobLock
from edge.jobs import Job, JobRunner
from edge.settings import ConfigError
from tests.conftest import ROOT, base_config
from tests.support.jobs import BLOCK_KEY, RUNS_KEY

KUWAIT = ZoneInfo("Asia/Kuwait")


class FakeClock:
    """Wall time that moves only when the runner sleeps; a sleep that would reach `stop_at` waits until
    cancelled instead."""

    def __init__(self, start: float, stop_at: float) -> None:
        self.now, self.stop_at = start, stop_at
        self.reached = asyncio.Event()

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        wake = self.now + seconds
        if wake >= self.stop_at:
            self.reached.set()
            await asyncio.Event().wait()
        await asyncio.sleep(0)
        self.now = max(self.now, wake)  # two jobs on one clock: neither moves it past the other's wake


def bare_gateway(tmp_path: Path, *, extra_plugins: list[object] | None = None, **extra: Any) -> Gateway:
    """A gateway that is never started: what a runner hands its jobs."""
    config = base_config(ollama_url="http://127.0.0.1:9", database_url=f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    return Gateway(config_module.parse({**config, **extra}, env={}), plugins=extra_plugins or [])


async def run_until(runner: JobRunner, *clocks: FakeClock) -> None:
    runner.start()
    try:
        await asyncio.wait_for(asyncio.gather(*(c.reached.wait() for c in clocks)), 10)
    finally:
        await runner.stop()


def recorder(clock: FakeClock, runs: list[float], fail_first: int = 0) -> Callable[[Gateway], Any]:
    async def run(gateway: Gateway) -> None:
        runs.append(clock.now)
        if len(runs) <= fail_first:
            raise RuntimeError(f"run {len(runs)} fails")

    return run


# ---- schedules ----------------------------------------------------------------------------------------------


async def test_an_interval_job_runs_at_each_multiple_of_its_interval(tmp_path: Path) -> None:
    clock, runs = FakeClock(1000.5, stop_at=1200), list[float]()
    job = Job("every.minute", recorder(clock, runs), every_seconds=60)
    gateway = bare_gateway(tmp_path)
    await run_until(
        JobRunner((job,), gateway=gateway, redis=None, tz=KUWAIT, clock=clock.time, sleep=clock.sleep), clock
    )
    assert runs == [1020, 1080, 1140]


async def test_a_daily_job_runs_once_a_day_at_its_local_time(tmp_path: Path) -> None:
    start = datetime(2026, 11, 27, 10, 0, tzinfo=UTC).timestamp()  # 13:00 in Kuwait: today's 03:00 has passed
    clock, runs = FakeClock(start, stop_at=start + 3 * 86400), list[float]()
    job = Job("nightly", recorder(clock, runs), daily_at="03:00")
    gateway = bare_gateway(tmp_path)
    await run_until(
        JobRunner((job,), gateway=gateway, redis=None, tz=KUWAIT, clock=clock.time, sleep=clock.sleep), clock
    )
    assert [datetime.fromtimestamp(t, KUWAIT).isoformat() for t in runs] == [
        "2026-11-28T03:00:00+03:00",
        "2026-11-29T03:00:00+03:00",
        "2026-11-30T03:00:00+03:00",
    ]


def test_a_daily_job_runs_once_on_the_days_daylight_saving_skips_or_repeats_its_time() -> None:
    london = ZoneInfo("Europe/London")
    job = Job("nightly", recorder(FakeClock(0, 0), []), daily_at="01:30")
    due, days = datetime(2026, 3, 27, 12, tzinfo=UTC).timestamp(), []
    for _ in range(3):  # 29 March 2026: 01:00 becomes 02:00, so 01:30 never happens
        due = job.next_due(due, london)
        days.append(datetime.fromtimestamp(due, london).isoformat())
    assert days == ["2026-03-28T01:30:00+00:00", "2026-03-29T02:30:00+01:00", "2026-03-30T01:30:00+01:00"]
    due, days = datetime(2026, 10, 24, 12, tzinfo=UTC).timestamp(), []
    for _ in range(3):  # 25 October 2026: 01:30 happens twice; the job runs at the first
        due = job.next_due(due, london)
        days.append(datetime.fromtimestamp(due, london).isoformat())
    assert days == ["2026-10-25T01:30:00+01:00", "2026-10-26T01:30:00+00:00", "2026-10-27T01:30:00+00:00"]


async def test_a_failing_run_is_logged_with_its_exception_and_the_next_runs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock, runs = FakeClock(0, stop_at=35), list[float]()
    job = Job("flaky", recorder(clock, runs, fail_first=1), every_seconds=10)
    gateway = bare_gateway(tmp_path)
    with caplog.at_level("INFO", logger="resayil.jobs"):
        await run_until(
            JobRunner((job,), gateway=gateway, redis=None, tz=KUWAIT, clock=clock.time, sleep=clock.sleep), clock
        )
    assert runs == [10, 20, 30]
    logged = [r for r in caplog.records if r.name == "resayil.jobs"]
    assert [r.fields["outcome"] for r in logged] == ["failed", "ok", "ok"]  # type: ignore[attr-defined]
    failed = logged[0]
    assert failed.levelname == "ERROR" and failed.exc_info and str(failed.exc_info[1]) == "run 1 fails"
    assert failed.fields["job"] == "flaky"  # type: ignore[attr-defined]
    assert failed.fields["due"] == "1970-01-01T00:00:10.000+00:00"  # type: ignore[attr-defined]
    assert isinstance(failed.fields["duration_ms"], float)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "Bad Name", "every_seconds": 1}, "a name is"),
        ({"name": "x", "every_seconds": 1, "daily_at": "03:00"}, "exactly one of"),
        ({"name": "x"}, "exactly one of"),
        ({"name": "x", "every_seconds": 0}, "positive"),
        ({"name": "x", "every_seconds": float("nan")}, "positive"),
        ({"name": "x", "daily_at": "24:00"}, "HH:MM"),
        ({"name": "x", "daily_at": "3:00"}, "HH:MM"),
    ],
)
def test_a_job_without_a_sane_name_or_schedule_is_refused(kwargs: dict[str, Any], message: str) -> None:
    async def run(gateway: Gateway) -> None:
        return None

    with pytest.raises(ConfigError, match=message):
        Job(run=run, **kwargs)


def test_two_jobs_of_one_name_or_an_unknown_time_zone_stop_startup(tmp_path: Path) -> None:
    class Twice:
        @hookimpl
        def resayil_jobs(self) -> list[Job]:
            return [Job("credits.sweep", self.run, every_seconds=5)]

        async def run(self, gateway: Gateway) -> None:
            return None

    with pytest.raises(ConfigError, match=r"job 'credits\.sweep': two plugins contribute a job of this name"):
        bare_gateway(tmp_path, extra_plugins=[Twice()], plugins=[{"name": "credits"}])
    with pytest.raises(ConfigError, match="timezone: unknown time zone 'Mars/Olympus'"):
        bare_gateway(tmp_path, timezone="Mars/Olympus")


# ---- one run per due run across workers (Redis) ----------------------------------------------------------


async def test_two_runners_on_one_redis_run_each_due_run_of_a_single_job_once(tmp_path: Path, redis_url: str) -> None:
    redis = aioredis.Redis.from_url(redis_url)
    runs: dict[str, list[tuple[int, float]]] = {"shared.single": [], "shared.each": []}
    gateway = bare_gateway(tmp_path)

    def worker(who: int, name: str, *, single: bool) -> tuple[JobRunner, FakeClock]:
        """One worker's schedule of one job, on its own clock (so each clock has one sleeper)."""
        clock = FakeClock(10_000, stop_at=10_100)

        async def run(gateway: Gateway) -> None:
            # The due run it is: one that found the other worker's lock held runs a little late.
            runs[name].append((who, math.floor(clock.now / 10) * 10))

        job = Job(name, run, every_seconds=10, single=single)
        runner = JobRunner((job,), gateway=gateway, redis=redis, tz=KUWAIT, clock=clock.time, sleep=clock.sleep)
        return runner, clock

    workers = [worker(who, name, single=name == "shared.single") for who in (0, 1) for name in runs]
    try:
        await asyncio.gather(*(run_until(runner, clock) for runner, clock in workers))
        dues = [10_010 + 10 * i for i in range(9)]
        assert sorted(due for _, due in runs["shared.single"]) == dues
        assert sorted(due for _, due in runs["shared.each"]) == sorted(dues * 2)
        assert await redis.keys("resayil:jobs:shared.single:lock") == []  # released after each run
    finally:
        await redis.aclose()


async def test_a_held_lock_makes_a_due_run_wait_until_it_expires(redis_url: str) -> None:
    redis = aioredis.Redis.from_url(redis_url)
    job = Job("held", lambda gateway: asyncio.sleep(0), every_seconds=1)
    first, second = JobLock(redis), JobLock(redis)
    try:
        assert await first.claim(job, due=100) == "claimed"
        assert await second.claim(job, due=100) == "done"  # the same due run: never twice
        assert await second.claim(job, due=101) == "busy"  # the first is still running it
        assert await second.holder(job) == first.token
        await asyncio.sleep(0.6)  # a dead holder: nothing renews its lock, which lives half an interval
        assert await second.claim(job, due=101) == "claimed"
        await first.release(job)  # no longer the holder: its release leaves the other's lock alone
        assert await second.holder(job) == second.token
        await second.release(job)
        assert await second.holder(job) is None
    finally:
        await redis.aclose()


async def test_stopping_the_gateway_cancels_a_running_job_and_releases_its_lock(
    sqlite_url: str, redis_url: str, serve: Any
) -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    class Blocking:
        @hookimpl
        def resayil_jobs(self) -> list[Job]:
            return [Job("blocks", self.run, every_seconds=0.05)]

        async def run(self, gateway: Gateway) -> None:
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise

    config = base_config(ollama_url="http://127.0.0.1:9", database_url=sqlite_url, redis_url=redis_url)
    async with serve(config, plugins=[Blocking()]):
        await asyncio.wait_for(started.wait(), 5)
        redis = aioredis.Redis.from_url(redis_url)
        assert await redis.exists("resayil:jobs:blocks:lock") == 1
    assert cancelled.is_set()
    assert await redis.exists("resayil:jobs:blocks:lock") == 0
    await redis.aclose()


# ---- the CLI -------------------------------------------------------------------------------------------------


def cli(tmp_path: Path, redis_url: str, *args: str, **settings: Any) -> subprocess.CompletedProcess[str]:
    config = base_config(
        ollama_url="http://127.0.0.1:9",
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}",
        redis_url=redis_url,
        plugins=[
            {"name": "credits"},
            {"name": "jobs_test", "module": "tests.support.jobs", "settings": settings},
        ],
    )
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESAYIL_")}
    command = [sys.executable, "-m", "edge", "--config", str(path)]
    if args[:2] == ("jobs", "run") and not (tmp_path / "cli.db").exists():
        subprocess.run([*command, "migrate"], cwd=ROOT, env=env, check=True, capture_output=True, timeout=120)
    return subprocess.run(
        [*command, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )


async def recorded(redis_url: str) -> list[dict[str, Any]]:
    redis = aioredis.Redis.from_url(redis_url)
    try:
        return [orjson.loads(item) for item in await redis.lrange(RUNS_KEY, 0, -1)]
    finally:
        await redis.aclose()


def test_jobs_list_names_each_job_its_schedule_and_who_runs_it(tmp_path: Path, redis_url: str) -> None:
    result = cli(tmp_path, redis_url, "jobs", "list")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "credits.sweep    every 30s                   single",
        "test.record      every 1s                    single",
        "test.daily       daily at 04:30 Asia/Kuwait  per-worker",
        "events.dispatch  every 2s                    single",
        "events.prune     every 3600s                 single",
    ]


async def test_jobs_run_runs_a_job_once_now_and_says_how_it_went(tmp_path: Path, redis_url: str) -> None:
    result = await asyncio.to_thread(cli, tmp_path, redis_url, "jobs", "run", "test.record")
    assert (result.returncode, result.stdout) == (0, "job test.record: ok\n"), result.stderr
    (run,) = await recorded(redis_url)
    assert run["pid"] != os.getpid() and abs(run["at"] - time.time()) < 60

    result = await asyncio.to_thread(cli, tmp_path, redis_url, "jobs", "run", "credits.sweep")
    assert (result.returncode, result.stdout) == (0, "job credits.sweep: ok\n"), result.stderr

    failing = await asyncio.to_thread(cli, tmp_path, redis_url, "jobs", "run", "test.record", fail=True)
    assert (failing.returncode, failing.stdout) == (1, "job test.record: failed (see the log)\n")
    (line,) = [orjson.loads(x) for x in failing.stderr.splitlines() if '"resayil.jobs"' in x]
    assert (line["job"], line["outcome"], line["level"]) == ("test.record", "failed", "error")
    assert "RuntimeError: the test job fails, as its settings ask" in line["exc"]


async def test_jobs_run_refuses_an_unknown_name_and_a_job_running_elsewhere(tmp_path: Path, redis_url: str) -> None:
    unknown = await asyncio.to_thread(cli, tmp_path, redis_url, "jobs", "run", "no.such.job")
    assert unknown.returncode == 2
    known = "credits.sweep, test.record, test.daily, events.dispatch, events.prune"
    assert f"jobs run: no job named 'no.such.job' (jobs: {known})\n" in unknown.stderr
    redis = aioredis.Redis.from_url(redis_url)
    await redis.set("resayil:jobs:test.record:lock", "other-host:4242:abc", px=60_000)
    await redis.aclose()
    busy = await asyncio.to_thread(cli, tmp_path, redis_url, "jobs", "run", "test.record")
    assert busy.returncode == 1
    assert "not run, it is running elsewhere now (lock held by other-host:4242:abc)" in busy.stderr
    assert await recorded(redis_url) == []


# ---- real processes: each due run once, and a takeover after SIGKILL -------------------------------------------


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def runs_until(
    redis: aioredis.Redis, predicate: Callable[[list[dict[str, Any]]], bool], within: float
) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []

    async def read() -> bool:
        runs[:] = [orjson.loads(item) for item in await redis.lrange(RUNS_KEY, 0, -1)]
        return predicate(runs)

    deadline = time.monotonic() + within
    while not await read():
        assert time.monotonic() < deadline, f"not seen in {within} s: {runs}"
        await asyncio.sleep(0.05)
    return runs


@pytest.mark.slow
async def test_a_single_job_runs_once_per_due_run_across_processes_and_another_takes_over_after_a_kill(
    tmp_path: Path, mariadb_database: str, redis_url: str, http: aiohttp.ClientSession
) -> None:
    from tests.test_failover_processes import start_gateway, stop_gateway

    config = base_config(
        ollama_url="http://127.0.0.1:9",
        database_url=mariadb_database,
        redis_url=redis_url,
        plugins=[{"name": "jobs_test", "module": "tests.support.jobs", "settings": {"every_seconds": 1}}],
    )
    config["server"]["log_level"] = "warning"
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    redis = aioredis.Redis.from_url(redis_url)
    processes = await asyncio.gather(start_gateway(path, http), start_gateway(path, http))
    try:
        # Both processes wake at every due second; one runs it.
        runs = await runs_until(redis, lambda runs: len(runs) >= 5, within=15)
        slots = [run["slot"] for run in runs]
        assert slots == list(range(slots[0], slots[0] + len(slots)))

        # The next run holds the lock and blocks; SIGKILL the process running it.
        await redis.set(BLOCK_KEY, 1)
        runs = await runs_until(redis, lambda runs: any(run["blocking"] for run in runs), within=5)
        (blocker,) = [run for run in runs if run["blocking"]]
        holder = await redis.get("resayil:jobs:test.record:lock")  # host:pid:random
        assert isinstance(holder, bytes) and int(holder.split(b":")[1]) == blocker["pid"]
        (victim,) = [p for p in processes if os.getpgid(blocker["pid"]) == p.proc.pid]
        victim.kill()
        killed_at = time.time()
        await redis.delete(BLOCK_KEY)

        runs = await runs_until(redis, lambda runs: runs[-1]["at"] > killed_at + 2, within=10)
        after = [run for run in runs if run["at"] > killed_at]
        assert {run["pid"] for run in after} != {blocker["pid"]}
        # The other process takes over within one interval of the kill, and runs every due second after.
        assert after[0]["at"] - killed_at < 1.0 + 0.25, after
        assert [run["slot"] for run in after] == list(range(after[0]["slot"], after[0]["slot"] + len(after)))
        slots = [run["slot"] for run in runs]
        assert len(slots) == len(set(slots))  # no due run ever ran twice
    finally:
        await asyncio.gather(*(stop_gateway(p) for p in processes))
        await redis.aclose()
