"""Helpers for the failover tests: callers named by tier, one chat call, and checks that every slot is given
back. Gateway processes take `TokenAuth` (with `pid_header`) and the `Recorder` (events to `EVENTS_KEY`)."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from tests.support.auth import bearer

if TYPE_CHECKING:
    from tests.conftest import Served

ACCOUNTS = {"basic": 11, "pro": 12, "enterprise": 13}
EVENTS_KEY = "test:failover:events"
LOCAL_MODEL = "llama3.2:3b"
CLOUD_MODEL = "deepseek-v3.1:671b-cloud"
# For gateway processes: tier callers, the answering worker's pid in `x-test-pid`, events to a Redis list.
PROCESS_PLUGINS = [
    {"name": "test_auth", "module": "tests.support.auth", "settings": {"pid_header": True}},
    {"name": "test_recorder", "module": "tests.support.recorder", "settings": {"events_list": EVENTS_KEY}},
]


def as_tier(who: str) -> dict[str, str]:
    """Headers of a caller named by tier: `pro` is account 12 on Pro; `basic:3` another account on Basic
    (11003)."""
    tier, _, n = who.partition(":")
    account = ACCOUNTS[tier] * 1000 + int(n) if n else ACCOUNTS[tier]
    return bearer(account, tier)


def failover_config(
    *, ollama_url: str, cloud_url: str, database_url: str, redis_url: str | None, parallel: int = 1, **settings: Any
) -> dict[str, Any]:
    """base_config with one local slot and the failover plugin; fast retries unless a test says otherwise."""
    from tests.conftest import base_config

    config = base_config(ollama_url=ollama_url, cloud_url=cloud_url, database_url=database_url, redis_url=redis_url)
    config["upstreams"]["ollama"]["parallel"] = parallel
    config["plugins"] = [
        {"name": "failover", "settings": {"retry_backoff_seconds": 0.01, "retry_backoff_max_seconds": 0.05, **settings}}
    ]
    return config


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: dict[str, Any], started: float) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.elapsed = time.monotonic() - started

    @property
    def route(self) -> str | None:
        return self.headers.get("x-resayil-route")

    @property
    def fingerprint(self) -> Any:
        return self.body.get("system_fingerprint")

    @property
    def code(self) -> Any:
        error = self.body.get("error")
        return error.get("code") if isinstance(error, dict) else None


async def chat(
    served: Served | str, tier: str, text: str = "hello", *, model: str = LOCAL_MODEL, http: Any = None
) -> Reply:
    """One chat completion as `tier`; `served` may be a gateway URL (then `http` is the session)."""
    body = {"model": model, "messages": [{"role": "user", "content": text}]}
    started = time.monotonic()
    if isinstance(served, str):
        request = http.post(f"{served}/v1/chat/completions", json=body, headers=as_tier(tier))
    else:
        request = served.request("POST", "/v1/chat/completions", json=body, headers=as_tier(tier))
    async with request as resp:
        data = await resp.json(content_type=None)
        return Reply(resp.status, {k.lower(): v for k, v in resp.headers.items()}, data, started)


async def staggered(calls: list[Any], *, gap: float = 0.03) -> list[Reply]:
    """Start the calls `gap` seconds apart (so their arrival order is known) and wait for all."""
    tasks = []
    for call in calls:
        tasks.append(asyncio.ensure_future(call))
        await asyncio.sleep(gap)
    return list(await asyncio.gather(*tasks))


def served_texts(fake: Any) -> list[str]:
    """The user text of each request the fake served, in the order it started serving them."""
    return [str(entry["body"]["messages"][0]["content"]) for entry in fake.served]


async def failover_keys(served: Served) -> dict[str, int]:
    """Members of every slot, line and waiter-lease set in Redis (the failover plugin's shared state)."""
    redis = served.gateway.redis
    assert redis is not None
    sizes = {}
    async for key in redis.scan_iter(match="resayil:failover:*"):
        name = key.decode()
        if name.rsplit(":", 1)[1] in ("slots", "queue", "alive"):
            sizes[name] = int(await redis.zcard(name))
    return sizes


async def assert_released(served: Served, *, within: float = 3.0) -> None:
    """Every slot and place in line is given back, in the store and (for Redis) in the raw keys."""
    plugin = served.gateway.plugin("failover")
    deadline = time.monotonic() + within
    while True:
        snaps = {
            name: await plugin.slots.snapshot(upstream=name)
            for name, up in served.gateway.upstreams.items()
            if up.kind == "local"
        }
        busy = {name: (s.in_use, s.waiting) for name, s in snaps.items() if s.in_use or s.waiting}
        raw = {k: v for k, v in (await failover_keys(served)).items() if v} if served.gateway.redis else {}
        if not busy and not raw:
            break
        assert time.monotonic() < deadline, f"still held: {busy} {raw}"
        await asyncio.sleep(0.02)
    if served.gateway.redis is None:
        for line in plugin.slots.lines.values():
            assert not line.held and not line.waiters
    else:
        assert all(not held for held in plugin.slots.held.values())
        assert all(not waiting for waiting in plugin.slots.waiting.values())
