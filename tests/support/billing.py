"""Shared by the billing tests: a gateway config with auth_keys, credits and billing pointed at a fake
MyFatoorah, and the steps of a purchase as a user's browser takes them.

    config = billing_config(ollama, db_url, fake)
    order = await checkout(served, user, "pack-5000")
    status, location = await pay(served, fake, order)      # the payment page, then the return to the gateway
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import orjson
import sqlalchemy as sa

from edge.outbox import events
from plugins.auth_keys.tables import accounts
from plugins.billing.tables import orders
from plugins.credits.tables import ledger
from tests.fakes.myfatoorah import DEFAULT_TOKEN, FakeMyFatoorah, FakeSettings, run_fake
from tests.support.portal import LoggedIn, auth_plugin_entry

WEBHOOK_SECRET = "test-webhook-secret"
WEBHOOK_PATH = "/api/billing/webhooks/myfatoorah"


def billing_entry(fake: FakeMyFatoorah | None, **settings: Any) -> dict[str, Any]:
    """The billing plugin's `plugins:` entry for `fake` (no token when `fake` is None)."""
    values: dict[str, Any] = {"webhook_secret": WEBHOOK_SECRET, "myfatoorah_timeout_seconds": 5}
    if fake is not None:
        values.update(myfatoorah_url=fake.url, token=DEFAULT_TOKEN)
    return {"name": "billing", "settings": {**values, **settings}}


def billing_config(
    ollama: Any, db_url: str, fake: FakeMyFatoorah | None, *, redis_url: str | None = None, **settings: Any
) -> dict[str, Any]:
    from tests.conftest import base_config

    plugins = [auth_plugin_entry(), {"name": "tiers"}, {"name": "credits"}, billing_entry(fake, **settings)]
    return base_config(ollama_url=ollama.url, database_url=db_url, redis_url=redis_url, plugins=plugins)


@asynccontextmanager
async def fake_myfatoorah() -> AsyncIterator[FakeMyFatoorah]:
    """The fake MyFatoorah, signing its webhooks with WEBHOOK_SECRET and retrying them quickly."""
    async with run_fake(FakeSettings(webhook_secret=WEBHOOK_SECRET, webhook_retry_seconds=0.05)) as running:
        yield running


@asynccontextmanager
async def shop(
    serve: Any,
    ollama: Any,
    db_url: str,
    fake: FakeMyFatoorah | None,
    *,
    plugins: Iterable[object] = (),
    webhooks: bool = True,
    **settings: Any,
) -> AsyncIterator[Any]:
    """The gateway of `billing_config` served; with `webhooks`, the fake sends its webhooks to it."""
    async with serve(billing_config(ollama, db_url, fake, **settings), plugins=list(plugins)) as served:
        if webhooks and fake is not None:
            fake.settings.webhook_url = served.url + WEBHOOK_PATH
        yield served


async def checkout(served: Any, user: LoggedIn, product: str) -> dict[str, Any]:
    """POST /api/billing/checkout; the order (asserting 201)."""
    async with served.request("POST", "/api/billing/checkout", json={"product": product}, headers=user.headers) as r:
        body = await r.json()
        assert r.status == 201, body
    order: dict[str, Any] = body["order"]
    return order


async def pay(served: Any, fake: FakeMyFatoorah, order: dict[str, Any], **page: str) -> tuple[int, dict[str, str]]:
    """Open the order's payment page (`page`: the fake's query knobs), follow its redirect back to the
    gateway's callback or error URL, and return that answer's status and its Location's query."""
    async with aiohttp.ClientSession() as http:
        async with http.get(order["payment_url"], params=page, allow_redirects=False) as resp:
            assert resp.status == 302, await resp.text()
            back = urlsplit(resp.headers["Location"])
    return await returned(served, f"{back.path}?{back.query}")


async def returned(served: Any, path: str) -> tuple[int, dict[str, str]]:
    """GET a return URL on the gateway; (status, the redirect's query as a dict)."""
    async with served.request("GET", path, allow_redirects=False) as resp:
        location = resp.headers.get("Location", "")
        assert location.startswith("https://portal.example.test/#/billing/result?"), location
        return resp.status, {k: v[0] for k, v in parse_qs(location.split("?", 1)[1]).items()}


async def order_row(served: Any, reference: str) -> Any:
    async with served.gateway.database.connect() as conn:
        return (await conn.execute(sa.select(orders).where(orders.c.reference == reference))).one()


async def ledger_rows(served: Any, account_id: int) -> list[Any]:
    async with served.gateway.database.connect() as conn:
        query = sa.select(ledger).where(ledger.c.account_id == account_id).order_by(ledger.c.id)
        return list((await conn.execute(query)).all())


async def account_row(served: Any, account_id: int) -> Any:
    async with served.gateway.database.connect() as conn:
        return (await conn.execute(sa.select(accounts).where(accounts.c.id == account_id))).one()


async def get_order(served: Any, user: LoggedIn, reference: str) -> tuple[int, dict[str, Any]]:
    async with served.request("GET", f"/api/billing/orders/{reference}", headers=user.headers) as resp:
        return resp.status, await resp.json()


async def mismatches(served: Any) -> list[dict[str, Any]]:
    """The durable `billing.mismatch` events stored so far, oldest first, as their payloads."""
    query = sa.select(events.c.payload).where(events.c.name == "billing.mismatch").order_by(events.c.id)
    async with served.gateway.database.connect() as conn:
        return [orjson.loads(row.payload) for row in (await conn.execute(query)).all()]
