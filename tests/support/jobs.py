"""A plugin contributing jobs, for tests/test_edge_jobs.py: each run of `test.record` is recorded in a Redis list.

Config: `{name: jobs_test, module: tests.support.jobs, settings: {every_seconds: 1}}` on a gateway
with `redis_url`. While `block_key` exists a run blocks after recording itself (holding its lock), so a
test can kill the process running it.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson

from edge.hookspecs import hookimpl
from edge.jobs import Job

if TYPE_CHECKING:
    from edge.gateway import Gateway

RUNS_KEY = "jobs-test:runs"
BLOCK_KEY = "jobs-test:block"


class Plugin:
    """`test.record` (single, every `every_seconds`) and `test.daily` (per worker, daily at 04:30)."""

    @dataclass
    class Settings:
        every_seconds: float = 1.0
        fail: bool = False

    def __init__(self, settings: Plugin.Settings) -> None:
        self.settings = settings

    @hookimpl
    def resayil_jobs(self) -> list[Job]:
        return [
            Job("test.record", self.record, every_seconds=self.settings.every_seconds),
            Job("test.daily", self.nothing, daily_at="04:30", single=False),
        ]

    async def nothing(self, gateway: Gateway) -> None:
        return None

    async def record(self, gateway: Gateway) -> None:
        redis = gateway.redis
        assert redis is not None, "the jobs test plugin records into Redis"
        now = time.time()
        blocking = bool(await redis.exists(BLOCK_KEY))
        # A run starts within milliseconds of its due instant, so its slot names the due run it is.
        slot = math.floor(now / self.settings.every_seconds)
        entry = {"pid": os.getpid(), "at": now, "slot": slot, "blocking": blocking}
        await redis.rpush(RUNS_KEY, orjson.dumps(entry))
        if self.settings.fail:
            raise RuntimeError("the test job fails, as its settings ask")
        if blocking:
            await asyncio.sleep(120)
