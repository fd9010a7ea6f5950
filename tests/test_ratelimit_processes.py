"""The limit holds across processes: two gateways with two granian workers each, on one Redis."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
import yaml

from tests.conftest import base_config
from tests.support.auth import bearer
from tests.support.servers import clean_env, gateway_process

pytestmark = pytest.mark.slow

CHAT = {"model": "llama3.2:3b", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 2}


def write_config(path: Path, *, ollama_url: str, redis_url: str, database: Path) -> Path:
    cfg = base_config(
        ollama_url=ollama_url,
        database_url=f"sqlite+aiosqlite:///{database}",
        redis_url=redis_url,
        plugins=[
            {"name": "test_auth", "module": "tests.support.auth", "settings": {"locale": "en", "pid_header": True}},
            {"name": "ratelimit"},
        ],
        workers=2,
        log_level="warning",
    )
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    return path


async def burst(urls: list[str], count: int, account: int, pids: set[str]) -> Counter[int]:
    """`count` requests at once, spread over the gateways, each on its own connection; `pids` collects
    the worker processes that answered."""
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one(i: int) -> int:
            async with http.post(
                urls[i % len(urls)] + "/v1/chat/completions", json=CHAT, headers=bearer(account, key=i)
            ) as r:
                await r.read()
                pids.add(r.headers["x-test-pid"])
                return r.status

        return Counter(await asyncio.gather(*(one(i) for i in range(count))))


async def test_two_gateways_with_two_workers_each_admit_exactly_the_limit(
    tmp_path: Path, redis_url: str, ollama: Any
) -> None:
    processes = []
    for n in (1, 2):
        cfg = write_config(
            tmp_path / f"gw{n}.yaml", ollama_url=ollama.url, redis_url=redis_url, database=tmp_path / f"gw{n}.db"
        )
        processes.append(gateway_process(clean_env(RESAYIL_CONFIG=str(cfg)), workers=2, log=tmp_path / f"gw{n}.log"))
    with processes[0] as port1, processes[1] as port2:
        urls = [f"http://127.0.0.1:{port1}", f"http://127.0.0.1:{port2}"]
        # Warm every worker's connection so the burst is about the limiter, not about start-up.
        pids: set[str] = set()
        warm = await burst(urls, 8, account=999, pids=pids)
        first = await burst(urls, 50, account=1, pids=pids)
        second = await burst(urls, 20, account=1, pids=pids)
        async with aiohttp.ClientSession() as http, http.get(urls[1] + "/readyz") as r:
            ready = await r.json()
    client = aioredis.Redis.from_url(redis_url)
    try:
        in_window = await client.llen("resayil:ratelimit:account:1")
    finally:
        await client.aclose()
    assert len(pids) == 4, "every worker of both gateways took part"
    assert warm == Counter({200: 8})
    # Basic: 10 a minute. Five times that, at once, through four workers in two processes: exactly 10 pass.
    assert first == Counter({200: 10, 429: 40})
    assert second == Counter({429: 20})
    assert in_window == 10
    assert len(ollama.served) == 8 + 10
    assert ready["parts"]["ratelimit"] == {"ok": True, "mode": "redis"}
    for n in (1, 2):
        assert "Traceback" not in (tmp_path / f"gw{n}.log").read_text()
