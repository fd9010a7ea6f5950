"""The `notify.send` job is a single-runner job: two workers sharing the database and Redis, each with its job
runner going, run each due send once between them (never both), and every message goes out once."""

from __future__ import annotations

import asyncio
import math
import time
from datetime import date, timedelta
from typing import Any

from edge.events import CloudBudget80
from tests.fakes.whatsapp import FakeWhatsApp
from tests.test_notify_outbox import fake, notify_config, outbox_rows, provider, publish

__all__ = ["fake", "provider"]  # fixtures, used by name

EVERY = 0.25


async def test_two_workers_run_each_due_send_once_between_them(
    serve: Any, ollama: Any, db_url: str, redis_url: str, provider: FakeWhatsApp
) -> None:
    config = notify_config(ollama, db_url, redis_url=redis_url, send_every_seconds=EVERY, batch=2)
    runs: list[str] = []
    async with serve(config) as first, serve(config) as second:
        for name, served in (("first", first), ("second", second)):
            delivery = served.gateway.plugin("notify").delivery
            real = delivery.run

            async def counted(name: str = name, real: Any = real) -> int:
                runs.append(name)
                return int(await real())

            delivery.run = counted
        started = time.time()
        for n in range(6):
            day = date(2026, 1, 1) + timedelta(days=n)
            await publish(first, CloudBudget80(day=day, used=400, cap=500, percent=80))
        await asyncio.sleep(12 * EVERY)
        rows = await outbox_rows(first)
    due_runs = math.floor(time.time() / EVERY) - math.floor(started / EVERY) + 1
    # Each due run ran on one worker: both workers running it would make about twice as many.
    assert due_runs / 2 < len(runs) <= due_runs, (due_runs, runs)
    assert len(rows) == 12 and {r.status for r in rows} == {"sent"}
    assert len(provider.accepted) == 12 == len({r.provider_message_id for r in rows})
