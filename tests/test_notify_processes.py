"""Two gateway processes (granian) on MariaDB and Redis, each running the `notify.send` job: the same
event handed to both workers, and a registration on one, reach the fake provider once per recipient."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
import yaml

from tests.conftest import base_config, truncate_mariadb
from tests.fakes.whatsapp import FakeSettings, FakeWhatsApp, run_fake
from tests.support.portal import FAST_PASSWORDS, MANY_REGISTRATIONS, PASSWORD
from tests.support.servers import until
from tests.test_failover_processes import start_gateway, stop_gateway
from tests.test_notify_outbox import ADMIN_AR, ADMIN_EN, order

USER = "+96551234567"


async def accepted_settles(fake: FakeWhatsApp, count: int, *, within: float) -> None:
    """Until `count` messages were accepted, then two more seconds (several sender runs) of nothing new."""
    await until(lambda: len(fake.accepted) >= count, within=within)
    await asyncio.sleep(2)


@pytest.mark.slow
async def test_the_same_event_on_two_workers_sends_one_message_per_recipient(
    tmp_path: Path, mariadb_database: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    truncate_mariadb(mariadb_database)
    async with run_fake(FakeSettings(pair_interval=6)) as fake:
        monkeypatch.setenv("RESAYIL_WHATSAPP_PROVIDER", "resayil")
        monkeypatch.setenv("RESAYIL_WHATSAPP_URL", fake.url + "/api/v1")
        monkeypatch.setenv("RESAYIL_WHATSAPP_TOKEN", "test-token")
        monkeypatch.setenv("RESAYIL_ADMIN_PHONES", f"{ADMIN_AR},{ADMIN_EN}:en")
        plugins = [
            {"name": "auth_keys", "settings": {**FAST_PASSWORDS, **MANY_REGISTRATIONS}},
            {"name": "notify", "settings": {"send_every_seconds": 0.2, "pair_interval_seconds": 6}},
            {"name": "notify_handover", "module": "tests.support.notify_handover"},
        ]
        config = base_config(
            ollama_url="http://127.0.0.1:9", database_url=mariadb_database, redis_url=redis_url, plugins=plugins
        )
        config["server"]["log_level"] = "warning"
        config["events"] = {"dispatch_every_seconds": 0.2}
        path = tmp_path / "gateway.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        async with aiohttp.ClientSession() as http:
            processes = await asyncio.gather(start_gateway(path, http), start_gateway(path, http))
            try:

                async def handover(url: str) -> int:
                    async with http.post(url + "/api/notify-test/handover") as resp:
                        return resp.status

                # The same event to both workers at once, and again: each worker's sender job runs too.
                for _ in range(2):
                    statuses = await asyncio.gather(*(handover(p.url) for p in processes))
                    assert statuses == [200, 200]
                body = {"name": "Fatima", "email": "f@example.com", "phone": USER, "password": PASSWORD}
                async with http.post(processes[1].url + "/api/auth/register", json={**body, "locale": "en"}) as resp:
                    assert resp.status == 201, await resp.text()
                await accepted_settles(fake, 3, within=20)
            finally:
                await asyncio.gather(*(stop_gateway(p) for p in processes))

    assert sorted(r["to"] or "" for r in fake.accepted) == sorted([ADMIN_AR, ADMIN_EN, USER])
    assert all(r["status"] == 200 for r in fake.received)  # never a second send inside the pair interval
    (welcome,) = [r["text"] or "" for r in fake.accepted if r["to"] == USER]
    assert order(welcome) == ["en", "ar"] and "Hello Fatima, welcome" in welcome
