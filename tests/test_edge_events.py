"""Typed, durable domain events (edge/events.py, edge/outbox.py): delivered after their transaction commits and
never after a rollback, retried for a failing consumer without repeating the others, one dispatcher at a time
per row, pruned after retention; and, across two gateway processes, delivered once to a de-duplicating
consumer when the worker delivering it is killed."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
import sqlalchemy as sa
import yaml

from edge import config as config_module
from edge.events import CloudBudget80, CreditsLow, Event, EventTypes, UserRegistered, encode
from edge.gateway import Gateway
from edge.hookspecs import hookimpl
from edge.outbox import events
from edge.settings import ConfigError
from plugins.auth_keys.tables import accounts, users
from tests.conftest import base_config, truncate_mariadb
from tests.support.events import ATTEMPTS_KEY, EFFECTS_KEY, HANG_KEY, Ping
from tests.support.portal import auth_plugin_entry


class Recorder:
    """Keeps every event it is given; fails the first `fail_first` calls."""

    def __init__(self, name: str, *, fail_first: int = 0) -> None:
        self.name = name
        self.fail_first = fail_first
        self.calls = 0
        self.seen: list[Event] = []

    @hookimpl
    def resayil_event_types(self) -> list[type[Event]]:
        return [Ping]

    @hookimpl
    async def resayil_event(self, event: Event) -> None:
        self.calls += 1
        if self.calls <= self.fail_first:
            raise RuntimeError(f"{self.name} is down")
        self.seen.append(event)


@pytest.fixture
async def started(db_url: str) -> AsyncIterator[Any]:
    """`await started(*plugins, **config)`: a started gateway on the test's database, its jobs not running."""
    gateways: list[Gateway] = []

    async def start(*plugins: object, **extra: Any) -> Gateway:
        raw = {**base_config(ollama_url="http://127.0.0.1:9", database_url=db_url), **extra}
        gateway = Gateway(config_module.parse(raw, env={}), plugins=plugins)
        await gateway.start(run_jobs=False)
        gateways.append(gateway)
        return gateway

    yield start
    for gateway in gateways:
        await gateway.stop()


async def rows(gateway: Gateway) -> list[Any]:
    async with gateway.database.connect() as conn:
        return list((await conn.execute(sa.select(events).order_by(events.c.id))).all())


def later(seconds: float) -> datetime:
    """UTC-naive, as the outbox's clock reads."""
    return datetime.now(UTC).replace(tzinfo=None) + timedelta(seconds=seconds)


async def test_an_event_committed_with_its_transaction_reaches_every_consumer_typed_once(started: Any) -> None:
    first, second = Recorder("first"), Recorder("second")
    gateway = await started(first, second)
    async with gateway.database.begin() as conn:
        await gateway.events.publish(Ping(note="hello"), conn=conn)
        assert first.seen == []  # nothing before the commit
    await gateway.drain()
    for recorder in (first, second):
        (event,) = recorder.seen
        assert isinstance(event, Ping) and event.note == "hello" and len(event.id) == 32
    assert first.seen[0].id == second.seen[0].id
    (row,) = await rows(gateway)
    assert (row.name, row.attempts, row.claimed_by) == ("test.pinged", 1, None) and row.delivered_at is not None
    assert sorted(orjson.loads(row.delivered_to)) == ["first", "second"]
    assert await gateway.events.dispatch() == 0 and len(first.seen) == 1  # delivered: not again


async def test_an_event_published_in_a_transaction_that_rolls_back_is_never_delivered(started: Any) -> None:
    recorder = Recorder("recorder")
    gateway = await started(recorder)
    with pytest.raises(RuntimeError, match="changed my mind"):
        async with gateway.database.begin() as conn:
            await gateway.events.publish(Ping(note="never"), conn=conn)
            raise RuntimeError("changed my mind")
    await gateway.drain()
    gateway.events.clock = lambda: later(3600)
    assert await gateway.events.dispatch() == 0
    assert recorder.seen == [] and await rows(gateway) == []


async def test_a_failing_consumer_gets_the_event_again_after_a_backoff_and_the_others_only_once(
    started: Any,
) -> None:
    steady, flaky = Recorder("steady"), Recorder("flaky", fail_first=2)
    gateway = await started(steady, flaky, events={"first_backoff_seconds": 10})
    await gateway.events.publish(Ping(note="retry me"))
    await gateway.drain()
    assert (len(steady.seen), flaky.seen) == (1, [])
    (row,) = await rows(gateway)
    assert row.delivered_at is None and row.attempts == 1 and "flaky: RuntimeError: flaky is down" in row.last_error

    assert await gateway.events.dispatch() == 0 and flaky.calls == 1  # not due before its backoff
    gateway.events.clock = lambda: later(11)
    assert await gateway.events.dispatch() == 0 and flaky.calls == 2  # fails again: the backoff doubles
    gateway.events.clock = lambda: later(11 + 19)
    assert await gateway.events.dispatch() == 0 and flaky.calls == 2
    gateway.events.clock = lambda: later(11 + 21)
    assert await gateway.events.dispatch() == 1
    assert [e.id for e in flaky.seen] == [e.id for e in steady.seen] and len(steady.seen) == 1
    (row,) = await rows(gateway)
    assert row.delivered_at is not None and row.attempts == 3


async def test_two_dispatchers_racing_deliver_each_event_once(started: Any) -> None:
    one, two = Recorder("consumer"), Recorder("consumer")
    first, second = await started(one, events={"batch": 7}), await started(two, events={"batch": 7})
    published = [Ping(note=f"n={i}") for i in range(40)]
    # Written outside Database.begin, so no publisher delivers them after the commit: only the dispatchers.
    async with first.database.engine.connect() as conn, conn.begin():
        for ping in published:
            await first.events.publish(ping, conn=conn)
    await first.drain()
    assert one.seen == []
    await asyncio.gather(*(g.events.dispatch() for g in (first, second, first, second)))
    delivered = [e.id for e in one.seen + two.seen]
    assert sorted(delivered) == sorted(p.id for p in published)  # each once, none twice
    assert all(row.delivered_at is not None for row in await rows(first))


async def test_a_claim_left_by_a_dead_worker_is_taken_over_once_its_lease_ends(started: Any) -> None:
    recorder = Recorder("recorder")
    gateway = await started(recorder, events={"lease_seconds": 30, "consumer_timeout_seconds": 5})
    async with gateway.database.engine.connect() as conn, conn.begin():
        await gateway.events.publish(Ping(note="orphan"), conn=conn)
        await conn.execute(events.update().values(claimed_by="dead:1:x", claimed_until=later(30)))
    assert await gateway.events.dispatch() == 0 and recorder.seen == []
    gateway.events.clock = lambda: later(31)
    assert await gateway.events.dispatch() == 1 and len(recorder.seen) == 1


async def test_delivered_events_are_pruned_after_retention_and_undelivered_ones_kept(started: Any) -> None:
    gateway = await started(Recorder("ok"), events={"retention_days": 2})
    await gateway.events.publish(Ping(note="old"))
    await gateway.drain()
    async with gateway.database.engine.connect() as conn, conn.begin():
        await gateway.events.publish(Ping(note="waiting"), conn=conn)
    gateway.events.clock = lambda: later(86400)
    assert await gateway.events.prune() == 0
    gateway.events.clock = lambda: later(2 * 86400 + 60)
    assert await gateway.events.prune() == 1
    assert [orjson.loads(row.payload)["note"] for row in await rows(gateway)] == ["waiting"]


async def test_event_types_round_trip_and_an_unregistered_or_clashing_type_is_refused(started: Any) -> None:
    types = EventTypes([[CloudBudget80, Ping]])
    alert = CloudBudget80(day=date(2025, 3, 1), used=4, cap=5, percent=80)
    assert types.decode(name="cloud.budget_80", event_id=alert.id, payload=encode(alert)) == alert

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Stray(Event):
        event_name: ClassVar[str] = "test.stray"

    gateway = await started(Recorder("recorder"))
    with pytest.raises(TypeError, match="not a registered event type"):
        await gateway.events.publish(Stray())

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Impostor(Event):
        event_name: ClassVar[str] = "credits.low"

    with pytest.raises(ConfigError, match=r"'credits\.low': both CreditsLow and"):
        EventTypes([[CreditsLow, Impostor]])


async def test_credits_low_from_an_admin_grant_names_the_account_owner_and_their_language(
    started: Any, db_url: str
) -> None:
    recorder = Recorder("recorder")
    # The owner is named by the accounts service (auth_keys provides it).
    gateway = await started(recorder, plugins=[auth_plugin_entry(), {"name": "credits"}])
    now = datetime(2025, 1, 1)
    async with gateway.database.begin() as conn:
        await conn.execute(sa.insert(accounts).values(id=7, name="Acme", tier="basic", created_at=now))
        owner = dict(account_id=7, name="Owner", password_hash="x", created_at=now, locale="en")
        await conn.execute(sa.insert(users).values(id=70, email="o@example.test", phone="+96550000070", **owner))
        await conn.execute(sa.insert(users).values(id=71, email="m@example.test", phone="+96550000071", **owner))
    credits = gateway.plugin("credits")
    await credits.ledger.credit(account_id=7, amount_milli=500_000, kind="grant", reference="start")
    async with gateway.database.begin() as conn:  # the plan sizes the warning: Basic, 1,000 credits
        await conn.execute(sa.text("UPDATE credit_balances SET tier = 'basic' WHERE account_id = 7"))
    await credits.grant(account_id=7, amount_milli=-400_000, kind="adjustment", reference="fix", actor="admin:1")
    await gateway.drain()
    (low,) = recorder.seen
    assert isinstance(low, CreditsLow)
    assert (low.account_id, low.user_id, low.locale, low.phone) == (7, 70, "en", "+96550000070")
    assert (low.balance_milli, low.plan_credits_milli, low.percent_remaining) == (100_000, 1_000_000, 10)
    assert (low.threshold_percent, low.tier) == (20, "basic")


async def test_registration_publishes_in_its_transaction(started: Any, db_url: str) -> None:
    recorder = Recorder("recorder")
    gateway = await started(recorder, plugins=[auth_plugin_entry()])
    auth = gateway.plugin("auth_keys")
    with pytest.raises(RuntimeError):
        async with gateway.database.begin() as conn:
            registration = dict(user_id=1, account_id=1, user_name="A", email="a@x.test", phone="+96550000001")
            await auth.publish_registered(conn, {**registration, "locale": "ar", "tier": "enterprise"})
            raise RuntimeError
    async with gateway.database.begin() as conn:
        registration = dict(user_id=2, account_id=2, user_name="B", email="b@x.test", phone="+96550000002")
        await auth.publish_registered(conn, {**registration, "locale": "en", "tier": "basic"})
    await gateway.drain()
    (event,) = recorder.seen
    assert isinstance(event, UserRegistered) and (event.user_id, event.locale, event.phone) == (2, "en", "+96550000002")


# ---- the crash test: two processes, the delivering worker killed ------------------------------------------------


@pytest.mark.slow
async def test_an_event_whose_delivering_worker_is_killed_is_still_delivered_once(
    tmp_path: Path, mariadb_database: str, redis_url: str
) -> None:
    from tests.test_failover_processes import start_gateway, stop_gateway

    truncate_mariadb(mariadb_database)
    config = base_config(
        ollama_url="http://127.0.0.1:9",
        database_url=mariadb_database,
        redis_url=redis_url,
        plugins=[{"name": "events_test", "module": "tests.support.events"}],
    )
    config["server"]["log_level"] = "warning"
    config["events"] = {"dispatch_every_seconds": 0.5, "lease_seconds": 3, "consumer_timeout_seconds": 2}
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    redis = aioredis.Redis.from_url(redis_url)
    async with aiohttp.ClientSession() as http:
        processes = await asyncio.gather(start_gateway(path, http), start_gateway(path, http))
        try:
            # The first delivery attempt hangs; the worker making it is killed.
            await redis.set(HANG_KEY, 1)
            async with http.post(processes[0].url + "/api/events-test/publish") as resp:
                assert resp.status == 200
                event_id = (await resp.json())["id"]
            attempts = await wait_for_list(redis, ATTEMPTS_KEY, 1, within=10)
            victim_pid = attempts[0]["pid"]
            (victim,) = [p for p in processes if os.getpgid(victim_pid) == p.proc.pid]
            victim.kill()
            killed_at = time.monotonic()
            await redis.delete(HANG_KEY)

            effects = await wait_for_list(redis, EFFECTS_KEY, 1, within=15)
            took = time.monotonic() - killed_at
            (survivor,) = [p for p in processes if p is not victim]
            assert effects == [{"id": event_id, "pid": effects[0]["pid"]}] and effects[0]["pid"] != victim_pid
            assert took < 10, took  # the lease (3 s) and a dispatch interval, with room for a loaded machine
            await asyncio.sleep(2)  # several dispatch runs later: still once
            assert len(await wait_for_list(redis, EFFECTS_KEY, 1, within=1)) == 1
            attempts = await wait_for_list(redis, ATTEMPTS_KEY, 2, within=1)
            assert [a["id"] for a in attempts] == [event_id, event_id] and survivor.proc.returncode is None
        finally:
            await asyncio.gather(*(stop_gateway(p) for p in processes))
            await redis.aclose()
    engine = sa.create_engine(mariadb_database.replace("aiomysql", "pymysql"))
    with engine.connect() as conn:
        (row,) = conn.execute(sa.select(events)).all()
    engine.dispose()
    assert row.id == event_id and row.delivered_at is not None and row.attempts == 1


async def wait_for_list(redis: aioredis.Redis, key: str, count: int, *, within: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + within
    while True:
        items = [orjson.loads(item) for item in await redis.lrange(key, 0, -1)]
        if len(items) >= count:
            return items
        assert time.monotonic() < deadline, f"{key}: {items} after {within} s"
        await asyncio.sleep(0.05)
