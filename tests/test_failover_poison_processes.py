"""The poisoned-input attack against the production shape: one granian gateway with two workers on MariaDB
and Redis, the rate limiter on, the fake Ollama as its own process with `--poison`.

One Basic customer spends the plan's whole minute on poisoned requests at once (and is refused past it);
the other customers, served by both workers meanwhile, are all answered by the local model, and /readyz
stays ready; so it does when several accounts of one attacker send it (the probe is served). A model server
that dies is still marked down, for every worker at once.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pymysql
import pytest
import yaml

from tests.conftest import MARIADB, need
from tests.support.failover import LOCAL_MODEL, PROCESS_PLUGINS, as_tier, failover_config
from tests.support.servers import clean_env, fake_ollama_process, gateway_process

pytestmark = pytest.mark.slow

POISON = "CRASH"


@pytest.fixture
def fresh_mariadb() -> Iterator[str]:
    """An empty database of this test's own: the gateway's `migrate` builds what its plugins need."""
    need("MariaDB", "127.0.0.1", 3306)
    name = f"resayil_failover_{os.getpid()}"
    conn = pymysql.connect(**MARIADB, autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name}")
            cur.execute(f"CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
        yield f"mysql+aiomysql://root@127.0.0.1:3306/{name}"
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name}")
    finally:
        conn.close()


async def chat(http: aiohttp.ClientSession, url: str, who: str, text: str) -> tuple[int, Any, dict[str, str]]:
    body = {"model": LOCAL_MODEL, "messages": [{"role": "user", "content": text}]}
    async with http.post(f"{url}/v1/chat/completions", json=body, headers=as_tier(who)) as r:
        raw = await r.read()
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            data = {"error": {"code": f"not JSON: {raw[:80]!r}"}}
        return r.status, data, {k.lower(): v for k, v in r.headers.items()}


def outcome(reply: tuple[int, Any, dict[str, str]]) -> tuple[int, Any]:
    status, data, headers = reply
    if status == 200:
        return status, headers.get("x-resayil-route")
    return status, data["error"]["code"]


async def queue_states(http: aiohttp.ClientSession, url: str, times: int) -> Counter[tuple[int, str]]:
    """/readyz asked `times` times on new connections, so both workers answer: (status, local queue state)."""

    async def one() -> tuple[int, str]:
        async with http.get(f"{url}/readyz") as r:
            return r.status, (await r.json())["parts"]["queue:ollama"]["state"]

    return Counter(await asyncio.gather(*(one() for _ in range(times))))


async def test_poisoned_requests_on_two_workers_leave_the_model_to_the_others_and_a_dead_one_is_down(
    tmp_path: Path, fresh_mariadb: str, redis_url: str
) -> None:
    fake = ExitStack()
    ollama_url = fake.enter_context(fake_ollama_process("--poison", POISON, "--latency", "0.05"))
    with fake:
        config = failover_config(
            ollama_url=ollama_url,
            cloud_url="http://127.0.0.1:9",
            database_url=fresh_mariadb,
            redis_url=redis_url,
            parallel=32,
        )
        config["server"].update(workers=2, log_level="warning")
        config["plugins"][:0] = [
            *PROCESS_PLUGINS,
            {"name": "ratelimit"},
        ]
        path = tmp_path / "gateway.yaml"
        path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
        log = tmp_path / "gateway.log"
        with gateway_process(clean_env(RESAYIL_CONFIG=str(path)), workers=2, log=log) as port:
            url = f"http://127.0.0.1:{port}"
            connector = aiohttp.TCPConnector(limit=0, force_close=True)  # every request may reach either worker
            async with aiohttp.ClientSession(connector=connector) as http:
                # The Basic plan's whole minute of poisoned requests at once, and two past it; others meanwhile.
                attack = [chat(http, url, "basic", f"{POISON} #{i}") for i in range(12)]
                others = [
                    chat(http, url, who, f"ordinary #{i}") for i in range(4) for who in ("basic:2", "pro", "enterprise")
                ]
                during = await asyncio.gather(*attack, *others)
                after = await asyncio.gather(
                    *(chat(http, url, who, "after") for who in ("basic:2", "basic:3", "pro", "enterprise") * 2)
                )
                ready = await queue_states(http, url, 8)

                assert [outcome(r) for r in during[12:] + after] == [(200, "local")] * 20
                assert ready == Counter({(200, "up"): 8})
                assert Counter(outcome(r) for r in during[:12]) == Counter(
                    {(502, "upstream_error"): 10, (429, "rate_limit_exceeded"): 2}
                )
                assert len({r[2]["x-test-pid"] for r in during + after}) == 2, "both workers took part"

                # Five accounts of one attacker, through both workers: the probe is served, nothing goes down.
                failing = [chat(http, url, f"basic:{n}", f"{POISON} from {n}") for n in range(10, 15)]
                assert [outcome(r) for r in await asyncio.gather(*failing)] == [(502, "upstream_error")] * 5
                await asyncio.sleep(0.5)  # the probe, off the request path, has answered by now
                assert await queue_states(http, url, 8) == Counter({(200, "up"): 8})
                served = await asyncio.gather(*(chat(http, url, "pro", "ordinary") for _ in range(6)))
                assert [outcome(r) for r in served] == [(200, "local")] * 6

                # The model server dies: refused connections mark it down, and every worker knows at once.
                fake.close()
                first = await chat(http, url, "basic:4", "ordinary")
                assert outcome(first) == (503, "upstream_unavailable")
                assert await queue_states(http, url, 8) == Counter({(503, "down"): 8})
                refused = await asyncio.gather(*(chat(http, url, "basic:5", "ordinary") for _ in range(6)))
                assert [outcome(r) for r in refused] == [(503, "upstream_unavailable")] * 6
                assert len({r[2]["x-test-pid"] for r in refused}) == 2
    assert "Traceback" not in log.read_text()
