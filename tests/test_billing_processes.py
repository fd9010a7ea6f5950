"""Exactly once across processes: 20 copies of one paid webhook at once, on two granian workers sharing
MariaDB and Redis, credit the order once and publish one event."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa
import yaml

from edge.outbox import events
from plugins.billing.tables import orders
from plugins.credits.tables import ledger
from tests.conftest import ROOT, base_config, truncate_mariadb
from tests.fakes.myfatoorah import FakeSettings, run_fake
from tests.support.billing import WEBHOOK_PATH, WEBHOOK_SECRET, billing_entry
from tests.support.myfatoorah import webhook_receiver
from tests.support.portal import PASSWORD, auth_plugin_entry, unique_email, unique_phone
from tests.support.servers import free_port

pytestmark = pytest.mark.slow


async def serve_two_workers(config_path: Path, http: aiohttp.ClientSession) -> tuple[Any, str]:
    port = free_port()
    env = {**os.environ, "RESAYIL_CONFIG": str(config_path), "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "edge", "serve", "--workers", "2", "--port", str(port)),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.returncode is None, "the gateway exited"
        with contextlib.suppress(aiohttp.ClientError, OSError):
            async with http.get(url + "/healthz") as resp:
                if resp.status == 200:
                    return proc, url
        await asyncio.sleep(0.2)
    raise RuntimeError("the gateway did not start")


async def stop(proc: Any) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proc.wait(), 15)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    await proc.wait()


async def test_twenty_copies_of_a_paid_webhook_on_two_workers_credit_once(
    tmp_path: Path, mariadb_database: str, redis_url: str
) -> None:
    truncate_mariadb(mariadb_database)
    async with run_fake(FakeSettings(webhook_secret=WEBHOOK_SECRET)) as fake, webhook_receiver() as receiver:
        config = base_config(
            ollama_url="http://127.0.0.1:9",
            database_url=mariadb_database,
            redis_url=redis_url,
            plugins=[auth_plugin_entry(), {"name": "credits"}, billing_entry(fake)],
        )
        config["server"]["log_level"] = "warning"
        path = tmp_path / "gateway.yaml"
        path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
        async with aiohttp.ClientSession() as http:
            proc, url = await serve_two_workers(path, http)
            try:
                register = {"name": "Buyer", "email": unique_email(), "phone": unique_phone(), "password": PASSWORD}
                async with http.post(url + "/api/auth/register", json=register) as resp:
                    body = await resp.json()
                    assert resp.status == 201, body
                    cookie = resp.headers["Set-Cookie"].split(";", 1)[0]
                headers = {"Cookie": cookie, "X-CSRF-Token": body["csrf_token"]}
                account_id = body["user"]["account_id"]
                async with http.post(
                    url + "/api/billing/checkout", json={"product": "pack-5000"}, headers=headers
                ) as r:
                    order = (await r.json())["order"]
                    assert r.status == 201, order
                # Paid at MyFatoorah; its webhook is caught, then sent 20 times at once to the gateway.
                fake.settings.webhook_url = receiver.url
                (invoice,) = fake.invoices.values()
                fake.pay(invoice)
                await fake.webhooks_sent()
                ((webhook, sent_headers),) = receiver.received
                hook_headers = {
                    k: v for k, v in sent_headers.items() if k.lower().startswith(("myfatoorah", "content"))
                }

                async def deliver() -> int:
                    async with http.post(url + WEBHOOK_PATH, data=webhook, headers=hook_headers) as resp:
                        return resp.status

                statuses = await asyncio.gather(*(deliver() for _ in range(20)))
                assert statuses == [200] * 20
                await asyncio.sleep(1)  # the event's delivery, off the request path
            finally:
                await stop(proc)
    engine = sa.create_engine(mariadb_database.replace("aiomysql", "pymysql"))
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(ledger).where(ledger.c.account_id == account_id)).all()
            (row,) = conn.execute(sa.select(orders).where(orders.c.reference == order["id"])).all()
            names = conn.execute(sa.select(events.c.name)).scalars().all()
    finally:
        engine.dispose()
    assert [(r.kind, r.amount_milli) for r in rows] == [("topup", 5_000_000)]
    assert row.status == "paid" and row.receipt_number is not None
    assert names.count("topup.paid") == 1
    assert len([p for p, _ in fake.calls if p == "/v2/GetPaymentStatus"]) == 1
