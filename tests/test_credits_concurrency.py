"""The proof: two gateway processes with two workers each on one MariaDB, 200 concurrent requests from an
account whose balance pays for exactly 10 worst-case holds. At most 10 are served, the balance never goes
below zero, every success has one usage row, and `python -m edge reconcile` finds nothing to report."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from contextlib import contextmanager
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
from tests.support.servers import Gate, clean_env, fake_ollama_process, gateway_processes, run_cli

pytestmark = pytest.mark.slow

REQUESTS = 200
HOLDS = 10
ACCOUNT = 42
# The fake answers no sooner than this, and then only once the burst's 190 refusals are back (its gate,
# see servers.Gate): no success settles and frees the part of its hold it did not spend while any of the
# 200 is still on its way to `reserve`.
LATENCY = "1"
TEST_AUTH = {"name": "test_auth", "module": "tests.support.auth"}


@contextmanager
def setup(
    tmp_path: Path, mariadb_database: str, redis_url: str, *fake_args: str, lease_requests: int = 0, gated: bool = True
) -> Iterator[tuple[Path, Any, Gate]]:
    """The fake Ollama and the config of a two-host burst; the fake's gate starts closed when `gated`."""
    truncate_mariadb(mariadb_database)
    gate = Gate(tmp_path / "fake-ollama.gate")
    if not gated:
        gate.path.touch()
    with fake_ollama_process(*fake_args, *gate.args) as ollama_url:
        config = credits_config(
            ollama_url=ollama_url,
            database_url=mariadb_database,
            redis_url=redis_url,
            extra_plugins=[TEST_AUTH],
            lease_requests=lease_requests,
        )
        config["server"]["log_level"] = "warning"
        path = tmp_path / "gateway.yaml"
        path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
        yield path, config, gate


class Watch:
    """Samples the account's balance row while the requests run: it must never be overspent."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.samples = 0
        self.worst_available: int | None = None
        self.lowest_balance: int | None = None

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            for row in await table_rows(self.gateway, "balances", account_id=ACCOUNT):
                available, balance = row["balance_milli"] - row["reserved_milli"], row["balance_milli"]
                self.samples += 1
                self.worst_available = min(
                    available, available if self.worst_available is None else self.worst_available
                )
                self.lowest_balance = min(balance, balance if self.lowest_balance is None else self.lowest_balance)
            await asyncio.sleep(0.01)


async def run_burst(
    config: dict[str, Any], ports: list[int], gate: Gate, send: Any, *, stream: bool
) -> tuple[list[tuple[str, int, Any]], Watch, Gateway, int]:
    """Fund the account with exactly HOLDS worst-case holds, send REQUESTS at once, wait for settlement."""
    gateway = Gateway(config_module.parse(config, env={}))
    await gateway.start()
    body = chat_body(stream=stream)
    # pro may spill llama3.2:3b over to its cloud fallback (2x); its default completion cap is 64 tokens.
    hold = (len(body) + 64) * 2
    await gateway.plugin("credits").grant(
        account_id=ACCOUNT, amount_milli=hold * HOLDS, kind="grant", reference="burst"
    )
    watch = Watch(gateway)
    stop = asyncio.Event()
    watcher = asyncio.ensure_future(watch.run(stop))

    async def counted(http: aiohttp.ClientSession, i: int) -> tuple[str, int, Any]:
        url = f"http://127.0.0.1:{ports[i % len(ports)]}/v1/chat/completions"
        result = await send(http, url, body, f"burst-{i:03d}")
        gate.returned()
        return result  # type: ignore[no-any-return]

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        *results, _ = await asyncio.gather(
            *(counted(http, i) for i in range(REQUESTS)), gate.open_after(REQUESTS - HOLDS)
        )
    await until_settled(gateway, ACCOUNT, within=20)
    stop.set()
    await watcher
    return results, watch, gateway, hold


async def reconcile(config_path: Path) -> tuple[int, str]:
    code, out, err = await run_cli("reconcile", env=clean_env(RESAYIL_CONFIG=str(config_path)))
    return code, out + err


async def check_books(
    gateway: Gateway, results: list[tuple[str, int, Any]], watch: Watch, hold: int
) -> dict[str, dict[str, Any]]:
    ok = {request_id for request_id, status, _ in results if status == 200}
    assert {status for _, status, _ in results} <= {200, 402}
    assert len(ok) == HOLDS, f"{len(ok)} of {REQUESTS} served with credit for {HOLDS}"
    usage = await table_rows(gateway, "usage", account_id=ACCOUNT)
    assert sorted(u["request_id"] for u in usage) == sorted(ok)  # one row per success, none for a refusal
    ledger = await table_rows(gateway, "ledger", account_id=ACCOUNT)
    assert [r["kind"] for r in ledger].count("usage") == HOLDS
    state = await gateway.plugin("credits").balance(ACCOUNT)
    assert state["reserved_milli"] == 0
    assert state["balance_milli"] == hold * HOLDS - sum(u["cost_milli"] for u in usage) >= 0
    assert state["balance_milli"] == sum(r["amount_milli"] for r in ledger)
    assert all(0 < u["cost_milli"] <= hold for u in usage)
    assert watch.samples > 10 and watch.worst_available is not None and watch.worst_available >= 0
    assert watch.lowest_balance is not None and watch.lowest_balance >= 0
    return {u["request_id"]: u for u in usage}


def assert_clean_logs(tmp_path: Path) -> None:
    for log in tmp_path.glob("gateway-*.log"):
        text = log.read_text(errors="replace")
        assert "Traceback" not in text and '"level":"error"' not in text, text[-3000:]


# Each test runs with a transaction per hold and settlement, and with leases (4 workers, each leasing room).
LEASES = pytest.mark.parametrize("lease_requests", [0, 32], ids=["holds", "leases"])


@LEASES
async def test_200_concurrent_requests_on_two_hosts_never_spend_more_than_the_balance(
    tmp_path: Path, mariadb_database: str, redis_url: str, lease_requests: int
) -> None:
    async def send(http: aiohttp.ClientSession, url: str, body: bytes, request_id: str) -> tuple[str, int, Any]:
        headers = {
            "content-type": "application/json",
            "x-request-id": request_id,
            **bearer(ACCOUNT, "pro", locale="ar"),
        }
        async with http.post(url, data=body, headers=headers) as r:
            data = await r.json()
            return request_id, r.status, data

    with (
        setup(tmp_path, mariadb_database, redis_url, "--latency", LATENCY, lease_requests=lease_requests) as (
            path,
            config,
            gate,
        ),
        gateway_processes(path, tmp_path) as ports,
    ):
        results, watch, gateway, hold = await run_burst(config, ports, gate, send, stream=False)
        try:
            usage = await check_books(gateway, results, watch, hold)
        finally:
            await gateway.stop()
        code, out = await reconcile(path)
    assert code == 0 and "0 difference(s)" in out, out
    for request_id, status, data in results:
        if status == 200:
            assert usage[request_id]["cost_milli"] == data["usage"]["total_tokens"]  # charged at 1x: local
        else:
            assert data["error"]["code"] == "insufficient_quota"
    assert_clean_logs(tmp_path)


@LEASES
async def test_200_concurrent_streams_cut_at_random_points_are_billed_exactly(
    tmp_path: Path, mariadb_database: str, redis_url: str, lease_requests: int
) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    cuts = {f"burst-{i:03d}": rng.randrange(0, 36) for i in range(REQUESTS)}

    async def send(http: aiohttp.ClientSession, url: str, body: bytes, request_id: str) -> tuple[str, int, Any]:
        headers = {
            "content-type": "application/json",
            "x-request-id": request_id,
            **bearer(ACCOUNT, "pro", locale="ar"),
        }
        r = await http.post(url, data=body, headers=headers)
        if r.status != 200:
            data = await r.json()
            r.release()
            return request_id, r.status, data
        received = 0
        while received < cuts[request_id]:
            raw = await r.content.readuntil(b"\n\n")
            if not raw or raw == b"data: [DONE]\n\n":
                break
            received += raw.count(b'"content":"tok')
        r.close()  # the client goes away mid-stream (or just after the end)
        return request_id, 200, received

    with (
        setup(
            tmp_path,
            mariadb_database,
            redis_url,
            "--latency",
            LATENCY,
            "--chunks",
            "30",
            "--chunk-interval",
            "0.03",
            lease_requests=lease_requests,
        ) as (path, config, gate),
        gateway_processes(path, tmp_path) as ports,
    ):
        results, watch, gateway, hold = await run_burst(config, ports, gate, send, stream=True)
        try:
            usage = await check_books(gateway, results, watch, hold)
        finally:
            await gateway.stop()
        code, out = await reconcile(path)
    assert code == 0 and "0 difference(s)" in out, f"seed {seed}: {out}"
    for request_id, status, received in results:
        if status != 200:
            continue
        row = usage[request_id]
        # Never billed for less than the client received, nor more than the upstream made (30 tokens).
        assert received <= row["completion_tokens"] <= 30, (seed, request_id, received, row)
        assert row["cost_milli"] == row["prompt_tokens"] + row["completion_tokens"]
        if row["outcome"] == "client_gone":
            assert row["usage_source"] == "estimated"
        else:
            assert row["outcome"] == "ok" and row["completion_tokens"] == 30
    assert_clean_logs(tmp_path)
