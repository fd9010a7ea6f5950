"""Issue 15, finding 5, as deployed: a gateway with two granian workers on MariaDB + Redis, leases batching
many accounts' settlements in one transaction. One account's requests report 1e30 tokens; every other
account's requests, sent at the same moment, are each charged exactly once, and nothing is left reserved."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from edge import config as config_module
from edge.gateway import Gateway
from tests.conftest import truncate_mariadb
from tests.support.auth import bearer
from tests.support.bodies import chat_body
from tests.support.credits import credits_config, table_rows, until_settled
from tests.support.servers import clean_env, fake_ollama_process, gateway_processes, run_cli

pytestmark = pytest.mark.slow

START = 1_000_000
GOOD = (21, 22, 23, 24)
BAD = 25
PER_ACCOUNT = 30
PLUGINS: list[dict[str, Any]] = [
    {"name": "test_auth", "module": "tests.support.auth"},
    {"name": "credits_absurd_usage", "module": "tests.support.absurd_usage", "settings": {"accounts": [BAD]}},
]


@pytest.mark.parametrize("lease_requests", [0, 32], ids=["holds", "leases"])
async def test_an_absurd_usage_on_two_workers_never_costs_other_accounts_their_charges(
    tmp_path: Path, mariadb_database: str, redis_url: str, lease_requests: int
) -> None:
    truncate_mariadb(mariadb_database)
    body = chat_body()
    hold = len(body) + 64  # basic: local only, 1x, the model's default cap of 64
    with fake_ollama_process("--latency", "0.3") as ollama_url:
        config = credits_config(
            ollama_url=ollama_url,
            database_url=mariadb_database,
            redis_url=redis_url,
            extra_plugins=PLUGINS,
            lease_requests=lease_requests,
            lease_idle_ms=200,
        )
        config["server"]["log_level"] = "warning"
        path = tmp_path / "gateway.yaml"
        path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
        with gateway_processes(path, tmp_path, count=1) as [port]:
            gateway = Gateway(config_module.parse(config, env={}))
            await gateway.start()
            try:
                for account in (*GOOD, BAD):
                    await gateway.plugin("credits").grant(
                        account_id=account, amount_milli=START, kind="grant", reference=f"seed-{account}"
                    )
                order = [account for _ in range(PER_ACCOUNT) for account in (*GOOD, BAD)]
                url = f"http://127.0.0.1:{port}/v1/chat/completions"
                async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

                    async def send(account: int) -> tuple[int, int, Any]:
                        headers = {"content-type": "application/json", **bearer(account)}
                        async with http.post(url, data=body, headers=headers) as r:
                            return account, r.status, await r.json()

                    answers = await asyncio.gather(*(send(a) for a in order))
                await until_settled(gateway, within=30)
                await check(gateway, answers, hold)
            finally:
                await gateway.stop()
        code, out, err = await run_cli("reconcile", env=clean_env(RESAYIL_CONFIG=str(path)))
    assert code == 0 and "0 difference(s)" in out, out + err
    text = (tmp_path / "gateway-0.log").read_text(errors="replace")
    assert "Traceback" not in text and '"level":"error"' not in text, text[-3000:]
    assert "usage out of bounds" in text  # the anomaly is logged


async def check(gateway: Gateway, answers: list[tuple[int, int, Any]], hold: int) -> None:
    assert {status for _, status, _ in answers} == {200}
    for account in GOOD:
        expected = sorted(data["usage"]["total_tokens"] for a, _, data in answers if a == account)
        usage = await table_rows(gateway, "usage", account_id=account)
        ledger = await table_rows(gateway, "ledger", account_id=account)
        state = await gateway.plugin("credits").balance(account)
        assert sorted(u["cost_milli"] for u in usage) == expected, account  # each charged once
        assert [r["kind"] for r in ledger].count("usage") == PER_ACCOUNT
        assert state["balance_milli"] == START - sum(expected) == sum(r["amount_milli"] for r in ledger)
        assert state["reserved_milli"] == 0
    usage = await table_rows(gateway, "usage", account_id=BAD)
    ledger = await table_rows(gateway, "ledger", account_id=BAD)
    state = await gateway.plugin("credits").balance(BAD)
    assert len(usage) == PER_ACCOUNT and {u["cost_milli"] for u in usage} == {hold}
    assert state["balance_milli"] == START - PER_ACCOUNT * hold == sum(r["amount_milli"] for r in ledger)
    assert state["reserved_milli"] == 0


async def test_an_upstream_claiming_two_billion_tokens_costs_at_most_the_hold_on_two_workers(
    tmp_path: Path, mariadb_database: str, redis_url: str
) -> None:
    """Issue 15, finding 6, as deployed: `max_tokens: 20` was charged the whole balance when the upstream
    claimed 2e9 completion tokens."""
    truncate_mariadb(mariadb_database)
    body = chat_body(max_tokens=20)
    claimed = '{"prompt_tokens": 5, "completion_tokens": 2000000000, "total_tokens": 2000000005}'
    with fake_ollama_process("--latency", "0.2", "--usage", claimed) as ollama_url:
        config = credits_config(
            ollama_url=ollama_url,
            database_url=mariadb_database,
            redis_url=redis_url,
            extra_plugins=PLUGINS[:1],
            lease_requests=32,
            lease_idle_ms=200,
        )
        config["server"]["log_level"] = "warning"
        path = tmp_path / "gateway.yaml"
        path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
        with gateway_processes(path, tmp_path, count=1) as [port]:
            gateway = Gateway(config_module.parse(config, env={}))
            await gateway.start()
            try:
                await gateway.plugin("credits").grant(
                    account_id=GOOD[0], amount_milli=START, kind="grant", reference="s"
                )
                url = f"http://127.0.0.1:{port}/v1/chat/completions"
                async with aiohttp.ClientSession() as http:

                    async def send() -> int:
                        headers = {"content-type": "application/json", **bearer(GOOD[0])}
                        async with http.post(url, data=body, headers=headers) as r:
                            await r.read()
                            return r.status

                    statuses = await asyncio.gather(*(send() for _ in range(20)))
                await until_settled(gateway, within=30)
                usage = await table_rows(gateway, "usage", account_id=GOOD[0])
                state = await gateway.plugin("credits").balance(GOOD[0])
            finally:
                await gateway.stop()
    assert statuses == [200] * 20 and len(usage) == 20
    assert all(u["cost_milli"] == u["prompt_tokens"] + u["completion_tokens"] <= len(body) + 20 for u in usage)
    assert all(u["completion_tokens"] == 20 for u in usage)
    assert START - state["balance_milli"] == sum(u["cost_milli"] for u in usage) <= 20 * (len(body) + 20)
    assert state["reserved_milli"] == 0
