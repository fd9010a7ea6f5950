"""Two gateway processes on one Redis share the local queue, the cloud cap and its alerts, and a crashed
process's slot frees itself.

The fake Ollama runs in the test's loop with unlimited parallelism, so its `max_in_flight_seen` shows what
the gateways together let through; one slot shared means never more than one at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
import yaml

from tests.support.failover import EVENTS_KEY, PROCESS_PLUGINS, chat, failover_config

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Process:
    def __init__(self, proc: asyncio.subprocess.Process, url: str) -> None:
        self.proc = proc
        self.url = url

    def kill(self) -> None:
        """SIGKILL the gateway and its worker: its own session, started by this test."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)


async def start_gateway(config_path: Path, http: aiohttp.ClientSession) -> Process:
    port = free_port()
    env = {**os.environ, "RESAYIL_CONFIG": str(config_path), "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edge",
        "serve",
        "--workers",
        "1",
        "--port",
        str(port),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    gateway = Process(proc, f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise RuntimeError(f"gateway exited with {proc.returncode}")
        with contextlib.suppress(aiohttp.ClientError, OSError):
            async with http.get(gateway.url + "/healthz") as resp:
                if resp.status == 200:
                    return gateway
        await asyncio.sleep(0.1)
    gateway.kill()
    raise RuntimeError("gateway did not start")


async def stop_gateway(gateway: Process) -> None:
    if gateway.proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            gateway.proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(gateway.proc.wait(), 10)
    gateway.kill()  # the worker too, if it outlived its parent
    await gateway.proc.wait()


StartAll = Callable[..., Any]


@pytest.fixture
async def gateways(tmp_path: Path, redis_url: str, ollama: Any, cloud: Any) -> AsyncIterator[StartAll]:
    """`await gateways(n, **settings)`: n gateway processes on one config, Redis and fake pair."""
    started: list[Process] = []

    async def start(count: int, http: aiohttp.ClientSession, **settings: Any) -> list[Process]:
        database = f"sqlite+aiosqlite:///{tmp_path / 'resayil.db'}"
        config = failover_config(
            ollama_url=ollama.url, cloud_url=cloud.url, database_url=database, redis_url=redis_url, **settings
        )
        config["server"]["log_level"] = "warning"
        config["plugins"][:0] = PROCESS_PLUGINS
        path = tmp_path / "gateway.yaml"
        path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
        migrate = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edge", "--config", str(path), "migrate", cwd=ROOT, stdout=asyncio.subprocess.DEVNULL
        )
        assert await migrate.wait() == 0
        fresh = await asyncio.gather(*(start_gateway(path, http) for _ in range(count)))
        started.extend(fresh)
        return fresh

    yield start
    await asyncio.gather(*(stop_gateway(g) for g in started))


async def shared_keys(redis: aioredis.Redis) -> dict[str, int]:
    sizes = {}
    async for key in redis.scan_iter(match="resayil:failover:*"):
        name = key.decode()
        if name.rsplit(":", 1)[1] in ("slots", "queue", "alive"):
            sizes[name] = int(await redis.zcard(name))
    return {k: v for k, v in sizes.items() if v}


async def until_released(redis: aioredis.Redis, *, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while await shared_keys(redis):
        assert time.monotonic() < deadline, f"still held: {await shared_keys(redis)}"
        await asyncio.sleep(0.05)


async def test_two_processes_share_the_queue_the_cap_and_the_alerts(
    gateways: StartAll, ollama: Any, cloud: Any, redis_url: str
) -> None:
    ollama.settings.latency = 0.2  # no limit of its own: only the gateways' one shared slot limits it
    redis = aioredis.Redis.from_url(redis_url)
    async with aiohttp.ClientSession() as http:
        a, b = await gateways(2, http, cloud_daily_cap=3)
        replies = await asyncio.gather(*(chat((a, b)[i % 2].url, "pro", f"n={i}", http=http) for i in range(16)))

        assert [r.status for r in replies] == [200] * 16
        routes = [r.route for r in replies]
        assert routes.count("cloud") == 3 == len(cloud.served)  # one cap for both
        assert routes.count("local") == 13 == len(ollama.served)
        assert ollama.max_in_flight_seen == 1  # one slot for both
        assert {r.fingerprint for r in replies if r.route == "cloud"} == {"fp_cloud"}

        for _ in range(100):  # alerts are published off the request path: allow them a moment
            if await redis.llen(EVENTS_KEY) >= 2:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)  # a duplicate alert would have arrived by now
        events = [orjson.loads(e) for e in await redis.lrange(EVENTS_KEY, 0, -1)]
        assert sorted(e["name"] for e in events) == ["cloud.budget_100", "cloud.budget_80"]
        await until_released(redis)
    await redis.aclose()


async def test_a_slot_held_by_a_killed_process_frees_itself_after_its_lease(
    gateways: StartAll, ollama: Any, redis_url: str
) -> None:
    ollama.settings.latency = 5.0
    redis = aioredis.Redis.from_url(redis_url)
    async with aiohttp.ClientSession() as http:
        a, b = await gateways(2, http, slot_lease_seconds=1.5, poll_interval_seconds=0.2, queue_max_wait_seconds=20)
        holder = asyncio.ensure_future(chat(a.url, "basic", "holder", http=http))
        await asyncio.sleep(0.5)
        waiter = asyncio.ensure_future(chat(b.url, "basic", "waiter", http=http))
        await asyncio.sleep(0.3)
        assert [e["body"]["messages"][0]["content"] for e in ollama.served] == ["holder"]
        ollama.settings.latency = 0.1
        a.kill()
        killed = time.monotonic()
        with contextlib.suppress(aiohttp.ClientError):
            await holder

        reply = await waiter
        assert (reply.status, reply.route, reply.fingerprint) == (200, "local", "fp_local")
        # Freed by the lease (1.5 s, last extended up to 0.5 s before the kill), not by the 20 s wait.
        assert 0.8 < time.monotonic() - killed < 3.0
        await until_released(redis)
    await redis.aclose()
