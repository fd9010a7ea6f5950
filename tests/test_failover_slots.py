"""The slot stores on their own: atomic admission, crash recovery by lease, wake-up latency across workers."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from plugins.failover.redis_slots import RedisSlots, keys
from plugins.failover.slots import MemorySlots, SlotStore, make_ticket


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    redis = aioredis.Redis.from_url(redis_url)
    yield redis
    await redis.aclose()


async def redis_store(client: aioredis.Redis, *, lease_s: float = 30, poll_s: float = 1.0) -> RedisSlots:
    store = RedisSlots(redis=client, parallel={"ollama": 1}, lease_s=lease_s, poll_s=poll_s)
    await store.start()
    return store


@pytest.fixture(params=["redis", "memory"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[SlotStore]:
    if request.param == "memory":
        yield MemorySlots(parallel={"ollama": 1})
        return
    redis = aioredis.Redis.from_url(request.getfixturevalue("redis_url"))
    slots = await redis_store(redis)
    yield slots
    await slots.stop()
    await redis.aclose()


async def test_concurrent_arrivals_admit_one_queue_four_and_spill_the_rest(store: SlotStore) -> None:
    tickets = [make_ticket(tier="pro", token=str(i)) for i in range(50)]
    entries = await asyncio.gather(
        *(store.enter(upstream="ollama", ticket=t, priority=1, spill_depth=3) for t in tickets)
    )
    states = [e.state for e in entries]
    assert (states.count("acquired"), states.count("queued"), states.count("spill")) == (1, 4, 45)
    snap = await store.snapshot(upstream="ollama")
    assert (snap.in_use, snap.waiting) == (1, {"pro": 4})
    for ticket in tickets:
        await store.release(upstream="ollama", ticket=ticket, healthy=True)
    snap = await store.snapshot(upstream="ollama")
    assert (snap.in_use, snap.waiting) == (0, {})


async def test_release_is_idempotent_and_hands_the_slot_to_the_next_in_line(store: SlotStore) -> None:
    a, b = make_ticket(tier="basic", token="a"), make_ticket(tier="basic", token="b")
    assert (await store.enter(upstream="ollama", ticket=a, priority=0, spill_depth=None)).state == "acquired"
    assert (await store.enter(upstream="ollama", ticket=b, priority=0, spill_depth=None)).state == "queued"
    waiting = asyncio.ensure_future(store.wait(upstream="ollama", ticket=b, max_wait_s=5))
    await asyncio.sleep(0.05)
    assert await store.release(upstream="ollama", ticket=a, healthy=True) is True
    assert await store.release(upstream="ollama", ticket=a, healthy=True) is False
    assert (await waiting).state == "acquired"
    assert (await store.snapshot(upstream="ollama")).in_use == 1
    assert await store.release(upstream="ollama", ticket=b, healthy=True) is True
    assert (await store.snapshot(upstream="ollama")).in_use == 0


async def test_a_slot_held_by_a_crashed_worker_frees_itself_after_its_lease(client: aioredis.Redis) -> None:
    crashed = await redis_store(client, lease_s=0.6)
    alive = await redis_store(client, lease_s=0.6, poll_s=0.1)
    mine = make_ticket(tier="basic", token="crashed")
    assert (await crashed.enter(upstream="ollama", ticket=mine, priority=0, spill_depth=None)).state == "acquired"
    await asyncio.sleep(0.5)
    await crashed.beat()  # still alive: the lease is extended
    await crashed.stop()  # the worker dies: nothing extends the lease any more, nothing releases it

    started = time.monotonic()
    other = make_ticket(tier="basic", token="other")
    assert (await alive.enter(upstream="ollama", ticket=other, priority=0, spill_depth=None)).state == "queued"
    assert (await alive.wait(upstream="ollama", ticket=other, max_wait_s=5)).state == "acquired"
    # Extended at 0.5 s for another 0.6 s: free about 0.6 s after the crash, found by the next poll.
    assert 0.4 < time.monotonic() - started < 1.0
    await alive.release(upstream="ollama", ticket=other, healthy=True)
    await alive.stop()


async def test_a_crashed_workers_place_in_line_frees_itself_too(client: aioredis.Redis) -> None:
    worker = await redis_store(client, lease_s=0.5, poll_s=0.1)
    holder, ghost = make_ticket(tier="basic", token="holder"), make_ticket(tier="enterprise", token="ghost")
    await worker.enter(upstream="ollama", ticket=holder, priority=0, spill_depth=None)
    # A place written by a worker that died at once: no heartbeat will ever extend it.
    k = keys("ollama")
    await client.zadd(k["queue"], {ghost: -2 * 10**12})
    await client.zadd(k["alive"], {ghost: int(time.time() * 1000) + 300})
    assert (await worker.snapshot(upstream="ollama")).waiting == {"enterprise": 1}
    await asyncio.sleep(0.35)
    assert (await worker.snapshot(upstream="ollama")).waiting == {}
    await worker.release(upstream="ollama", ticket=holder, healthy=True)
    await worker.stop()


async def test_a_release_in_one_worker_wakes_a_waiter_in_another_within_milliseconds(
    client: aioredis.Redis, redis_url: str
) -> None:
    # Two clients (two connection pools) stand for two workers; polling alone would take up to 1 s.
    other_client = aioredis.Redis.from_url(redis_url)
    first, second = await redis_store(client), await redis_store(other_client)
    await asyncio.sleep(0.1)  # both subscribed
    latencies: list[float] = []
    for i in range(20):
        a, b = make_ticket(tier="pro", token=f"a{i}"), make_ticket(tier="pro", token=f"b{i}")
        await first.enter(upstream="ollama", ticket=a, priority=1, spill_depth=None)
        await second.enter(upstream="ollama", ticket=b, priority=1, spill_depth=None)
        waiting = asyncio.ensure_future(second.wait(upstream="ollama", ticket=b, max_wait_s=5))
        await asyncio.sleep(0.02)
        released = time.perf_counter()
        await first.release(upstream="ollama", ticket=a, healthy=True)
        assert (await waiting).state == "acquired"
        latencies.append(time.perf_counter() - released)
        await second.release(upstream="ollama", ticket=b, healthy=True)
    print(f"hand-over latency: median {statistics.median(latencies) * 1000:.2f} ms, max {max(latencies) * 1000:.2f} ms")
    assert statistics.median(latencies) < 0.02 and max(latencies) < 0.2
    for store in (first, second):
        await store.stop()
    await other_client.aclose()


async def test_a_waiter_that_times_out_leaves_the_line(store: SlotStore) -> None:
    a, b = make_ticket(tier="basic", token="a"), make_ticket(tier="pro", token="b")
    await store.enter(upstream="ollama", ticket=a, priority=0, spill_depth=None)
    await store.enter(upstream="ollama", ticket=b, priority=1, spill_depth=None)
    assert (await store.wait(upstream="ollama", ticket=b, max_wait_s=0.2)).state == "timeout"
    assert (await store.snapshot(upstream="ollama")).waiting == {}
    await store.release(upstream="ollama", ticket=a, healthy=True)
    assert (await store.snapshot(upstream="ollama")).in_use == 0


async def test_down_marking_counts_failures_and_clears_on_success(store: SlotStore) -> None:
    assert await store.failed(upstream="ollama", threshold=3, cooldown_s=5) is False
    assert await store.failed(upstream="ollama", threshold=3, cooldown_s=5) is False
    t = make_ticket(tier="basic", token="ok")
    await store.enter(upstream="ollama", ticket=t, priority=0, spill_depth=None)
    await store.release(upstream="ollama", ticket=t, healthy=True)  # a success starts the count again
    assert await store.failed(upstream="ollama", threshold=3, cooldown_s=5) is False
    assert await store.failed(upstream="ollama", threshold=3, cooldown_s=5) is False
    assert await store.failed(upstream="ollama", threshold=3, cooldown_s=5) is True
    entry = await store.enter(upstream="ollama", ticket=t, priority=0, spill_depth=3)
    assert entry.state == "down" and 4 < entry.retry_after_s <= 5
    assert (await store.snapshot(upstream="ollama")).down_for_s > 4


async def failed_request(store: SlotStore, account: str, *, window_s: float = 5) -> bool:
    return await store.failed_request(upstream="ollama", account=account, threshold=3, window_s=window_s, probe_s=5)


async def test_failed_requests_call_for_a_probe_only_across_accounts_and_clear_on_success(store: SlotStore) -> None:
    # One account, however many of its requests fail, at once or one after another, never calls for one.
    assert not any(await asyncio.gather(*(failed_request(store, "11") for _ in range(50))))
    assert await failed_request(store, "12") is False
    t = make_ticket(tier="basic", token="ok")
    await store.enter(upstream="ollama", ticket=t, priority=0, spill_depth=None)
    await store.release(upstream="ollama", ticket=t, healthy=True)  # a success starts the count again
    assert await failed_request(store, "13") is False
    assert await failed_request(store, "11") is False
    # Three accounts with no success between: exactly one caller, of many at once, is to probe.
    assert sum(await asyncio.gather(*(failed_request(store, "12") for _ in range(20)))) == 1
    assert await failed_request(store, "14") is False  # a probe is under way
    assert (await store.snapshot(upstream="ollama")).down_for_s == 0

    # Served: the failures were the requests' own; the count starts again.
    assert await store.probed(upstream="ollama", healthy=True, cooldown_s=5) is False
    assert await failed_request(store, "15") is False
    assert await failed_request(store, "16") is False
    assert await failed_request(store, "17") is True
    # Not served: down for the cool-down, and nothing counts meanwhile.
    assert await store.probed(upstream="ollama", healthy=False, cooldown_s=5) is True
    entry = await store.enter(upstream="ollama", ticket=t, priority=0, spill_depth=3)
    assert entry.state == "down" and 4 < entry.retry_after_s <= 5
    assert await failed_request(store, "18") is False


async def test_failed_requests_count_within_their_window_only(store: SlotStore) -> None:
    assert await failed_request(store, "11", window_s=0.3) is False
    assert await failed_request(store, "12", window_s=0.3) is False
    await asyncio.sleep(0.4)
    assert await failed_request(store, "13", window_s=0.3) is False  # the first two are out of the window
    assert await failed_request(store, "14", window_s=0.3) is False
    assert await failed_request(store, "15", window_s=0.3) is True


async def test_stop_ends_the_listener_even_when_the_redis_client_swallows_the_cancellation(
    client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py's `get_message(timeout=...)` can swallow a cancellation that lands inside its own timeout and
    return None; a `python -m edge reconcile` then never exited. Stopping must not depend on the cancel."""
    original = aioredis.client.PubSub.get_message

    async def swallowing(self: aioredis.client.PubSub, *args: object, **kwargs: object) -> object:
        try:
            return await original(self, *args, **kwargs)  # type: ignore[arg-type]
        except asyncio.CancelledError:
            return None

    monkeypatch.setattr(aioredis.client.PubSub, "get_message", swallowing)
    store = await redis_store(client, poll_s=0.2)
    tasks = list(store._tasks)
    await asyncio.sleep(0.3)  # subscribed and waiting for a message
    started = time.monotonic()
    # Not wait_for: it would wait for a cancellation that never lands, and hang the run instead of failing.
    stopping = asyncio.ensure_future(store.stop())
    await asyncio.wait({stopping}, timeout=5)
    assert stopping.done(), "stop() did not return"
    assert time.monotonic() - started < 1.0
    assert all(task.done() for task in tasks)
