"""The proof for key limits, as deployed: one gateway with two granian workers on MariaDB + Redis, 200
concurrent requests with one API key whose daily limit admits exactly 10 worst-case holds (the account's
balance pays for far more). Exactly 10 are served, the key's spend never passes its limit, its scope row
agrees with its usage rows, `reconcile` finds nothing; a raised limit then reaches both workers at once."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa
import yaml

from edge import config as config_module
from edge.gateway import Gateway
from plugins.credits.tables import scope_holds, spend_scopes
from tests.conftest import truncate_mariadb
from tests.support.bodies import chat_body
from tests.support.credits import credits_config, table_rows, until_settled
from tests.support.portal import auth_plugin_entry, unique_email, unique_phone
from tests.support.servers import clean_env, fake_ollama_process, run_cli
from tests.test_credits_concurrency import gateway_processes

pytestmark = pytest.mark.slow

REQUESTS = 200
HOLDS = 10
# Every request reaches `reserve` before the first success settles (see test_credits_concurrency.py).
LATENCY = "4"


async def limited_key(gateway: Gateway, limit_milli: int) -> tuple[int, int, str]:
    """(account, key id, secret) of a new basic user's key with a daily limit, the account well funded."""
    auth = gateway.plugin("auth_keys")
    _, account = await auth.users.create(
        name="Limited", email=unique_email(), phone=unique_phone(), password_hash="x", locale="en", tier="basic"
    )
    key, secret = await auth.keys.create(
        account_id=account,
        user_id=None,
        name="limited",
        scopes=("read", "write"),
        expires_at=None,
        limit=(limit_milli, "day"),
    )
    await gateway.plugin("credits").grant(account_id=account, amount_milli=10**9, kind="grant", reference="seed")
    return account, int(key["id"]), secret


@pytest.mark.parametrize("lease_requests", [0, 32], ids=["holds", "leases"])
async def test_200_concurrent_requests_on_two_workers_never_spend_past_a_keys_limit(
    tmp_path: Path, mariadb_database: str, redis_url: str, lease_requests: int
) -> None:
    truncate_mariadb(mariadb_database)
    body = chat_body()
    hold = len(body) + 64  # basic: local only, 1x, the model's default cap of 64
    limit = hold * HOLDS
    with fake_ollama_process("--latency", LATENCY) as ollama_url:
        config = credits_config(
            ollama_url=ollama_url,
            database_url=mariadb_database,
            redis_url=redis_url,
            extra_plugins=[auth_plugin_entry()],
            lease_requests=lease_requests,
        )
        config["server"]["log_level"] = "warning"
        path = tmp_path / "gateway.yaml"
        path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
        with gateway_processes(path, tmp_path, count=1) as [port]:
            gateway = Gateway(config_module.parse(config, env={}))
            await gateway.start()
            try:
                account, key_id, secret = await limited_key(gateway, limit)
                url = f"http://127.0.0.1:{port}/v1/chat/completions"
                headers = {"content-type": "application/json", "authorization": f"Bearer {secret}"}

                async def send(http: aiohttp.ClientSession) -> tuple[int, Any]:
                    async with http.post(url, data=body, headers=headers) as r:
                        return r.status, await r.json()

                async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
                    answers = await asyncio.gather(*(send(http) for _ in range(REQUESTS)))
                await until_settled(gateway, account, within=30)
                statuses = [status for status, _ in answers]
                assert set(statuses) <= {200, 402} and statuses.count(200) == HOLDS, statuses
                assert {a["error"]["code"] for s, a in answers if s == 402} == {"key_limit_reached"}
                usage = await table_rows(gateway, "usage", account_id=account)
                spent = sum(u["cost_milli"] for u in usage)
                assert len(usage) == HOLDS and all(u["key_id"] == key_id for u in usage)
                async with gateway.database.connect() as conn:
                    scope = (await conn.execute(sa.select(spend_scopes))).one()
                    assert (await conn.execute(sa.select(scope_holds))).all() == []
                assert (scope.kind, scope.scope_id, scope.period) == ("key", key_id, "day")
                assert scope.spent_milli == spent <= limit and scope.reserved_milli == 0
                state = await gateway.plugin("credits").balance(account)
                assert state["reserved_milli"] == 0 and state["balance_milli"] == 10**9 - spent

                # A raised limit reaches both workers at once (the key cache is invalidated through Redis).
                await gateway.plugin("auth_keys").keys.set_limit(
                    key_id=key_id, account_id=account, limit_milli=limit * 10, limit_period="day"
                )
                await gateway.plugin("auth_keys").accounts.invalidate_key(key_id)
                await asyncio.sleep(0.2)
                fresh = aiohttp.TCPConnector(limit=0, force_close=True)  # a connection each: both workers answer
                async with aiohttp.ClientSession(connector=fresh) as http:
                    again = await asyncio.gather(*(send(http) for _ in range(8)))
                assert [status for status, _ in again] == [200] * 8
                await until_settled(gateway, account, within=30)
            finally:
                await gateway.stop()
        code, out, err = await run_cli("reconcile", env=clean_env(RESAYIL_CONFIG=str(path)))
    assert code == 0 and "0 difference(s)" in out, out + err
    text = (tmp_path / "gateway-0.log").read_text(errors="replace")
    assert "Traceback" not in text and '"level":"error"' not in text, text[-3000:]
