"""Login guesses against the gateway as production runs it: granian with two workers on MariaDB + Redis.

A burst of guesses lands on both workers at once; each attempt must take its place in the shared window
before its password is verified, so no more than the limit are ever evaluated, whichever worker they hit.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pymysql
import pytest
import yaml

from tests.conftest import MARIADB, need
from tests.support.portal import PASSWORD, auth_config, guess_burst, login_at
from tests.support.servers import clean_env, gateway_process
from tests.test_auth_bruteforce import MEASURABLE, assert_throttled

pytestmark = pytest.mark.slow


@pytest.fixture
def auth_database() -> Iterator[str]:
    """An empty MariaDB database of its own, which `python -m edge migrate` brings to auth_keys' head only
    (the shared test database carries every plugin's revisions)."""
    need("MariaDB", "127.0.0.1", 3306)
    name = f"resayil_test_auth_{os.getpid()}"
    conn = pymysql.connect(**MARIADB, autocommit=True)
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name}")
        cur.execute(f"CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci")
    try:
        yield f"mysql+aiomysql://root@127.0.0.1:3306/{name}"
    finally:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.close()


async def test_concurrent_guesses_on_two_workers_evaluate_at_most_the_limit(
    tmp_path: Path, auth_database: str, redis_url: str, ollama: Any
) -> None:
    config = auth_config(ollama, auth_database, redis_url=redis_url, server={"log_level": "warning"}, **MEASURABLE)
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    log = tmp_path / "gateway.log"
    with gateway_process(clean_env(RESAYIL_CONFIG=str(path)), workers=2, log=log) as port:
        url = f"http://127.0.0.1:{port}"
        body = {"name": "Bob", "email": "bob@example.com", "phone": "+96597654321", "password": PASSWORD}
        async with aiohttp.ClientSession() as http:
            async with http.post(url + "/api/auth/register", json=body) as resp:
                assert resp.status == 201, await resp.text()
            # 30 wrong guesses for one user at once, then the right password as soon as one is refused.
            guesses = [("bob@example.com", f"guess number {i}") for i in range(30)]
            statuses, right = await guess_burst(http, url, guesses=guesses, then=("BOB@example.com", PASSWORD))
            assert (statuses.count(401), statuses.count(429)) == (5, 25), statuses
            assert_throttled(*right, window=900)
            # The phone is another login name: the email's lockout neither spills over to it nor shows there.
            assert (await login_at(http, url, "+965 9765 4321", PASSWORD))[0] == 200

        # 30 names at once from another address: its 20 are evaluated, the rest refused.
        other = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
        async with aiohttp.ClientSession(connector=other) as http:
            guesses = [(f"spray-{i}@example.com", "Summer2026!") for i in range(30)]
            statuses, right = await guess_burst(http, url, guesses=guesses, then=("carol@example.com", PASSWORD))
            assert (statuses.count(401), statuses.count(429)) == (20, 10), statuses
            assert_throttled(*right, window=900)
    assert "Traceback" not in log.read_text()
