"""What a hostile customer could spend our MyFatoorah quota with, on SQLite and MariaDB.

The payer's return is an unauthenticated URL, and every GetPaymentStatus call it makes counts against
MyFatoorah's per-account rate limit, which every other payer's confirmation needs too: reloading it (or a
script hitting it) asks MyFatoorah about an order at most once per `callback_check_seconds`, and a 429 is
never asked again at once. Concurrent checkouts cannot pass `max_pending_orders` (each one an invoice)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from plugins.billing.tables import orders
from tests.fakes.myfatoorah import FakeMyFatoorah, FakeSettings, run_fake
from tests.support.billing import checkout, order_row, pay, returned, shop
from tests.support.portal import register_user

STATUS = "/v2/GetPaymentStatus"


@pytest.fixture
async def fake() -> AsyncIterator[FakeMyFatoorah]:
    async with run_fake(FakeSettings()) as running:
        yield running


def status_calls(fake: FakeMyFatoorah) -> int:
    return sum(1 for path, _ in fake.calls if path == STATUS)


async def test_reloading_the_return_asks_myfatoorah_once_per_cooldown(
    serve: Any, ollama: Any, db_url: str, fake: FakeMyFatoorah
) -> None:
    fake.settings.pending = True  # the payment stays in progress: every return would ask again
    async with shop(serve, ollama, db_url, fake, webhooks=False) as served:
        user = await register_user(served)
        order = await checkout(served, user, "pack-5000")
        assert (await pay(served, fake, order))[1]["result"] == "pending"
        assert status_calls(fake) == 1
        (invoice,) = fake.invoices.values()
        payment_id = str(invoice.transactions[-1]["PaymentId"])
        path = f"/api/billing/callback?order={order['id']}&paymentId={payment_id}"

        answers = await asyncio.gather(*(returned(served, path) for _ in range(30)))
        assert {(status, query["result"]) for status, query in answers} == {(303, "confirming")}
        assert status_calls(fake) == 1

        fake.complete(payment_id)  # paid at MyFatoorah; once the cooldown is over the return asks again
        async with served.gateway.database.begin() as conn:
            earlier = (await order_row(served, order["id"])).callback_asked_at - timedelta(seconds=11)
            await conn.execute(
                orders.update().where(orders.c.reference == order["id"]).values(callback_asked_at=earlier)
            )
        assert (await returned(served, path))[1]["result"] == "paid"
        assert status_calls(fake) == 2
        # Paid: a return now only reads the order.
        assert (await returned(served, path))[1]["result"] == "paid"
        assert status_calls(fake) == 2


async def test_a_throttled_status_call_is_not_repeated_at_once(
    serve: Any, ollama: Any, db_url: str, fake: FakeMyFatoorah
) -> None:
    fake.settings.status_limit = 1  # one GetPaymentStatus a minute; the next answers 429
    async with shop(serve, ollama, db_url, fake, webhooks=False) as served:
        user = await register_user(served)
        first = await checkout(served, user, "pack-5000")
        assert (await pay(served, fake, first))[1]["result"] == "paid"
        second = await checkout(served, user, "pack-5000")
        assert (await pay(served, fake, second))[1]["result"] == "confirming"
        assert status_calls(fake) == 2  # the 429 was not followed by more calls
        async with served.gateway.database.connect() as conn:
            statuses = (await conn.execute(sa.select(orders.c.status).order_by(orders.c.id))).scalars().all()
        assert statuses == ["paid", "pending"]


async def test_concurrent_checkouts_do_not_pass_the_pending_orders_cap(
    serve: Any, ollama: Any, db_url: str, fake: FakeMyFatoorah
) -> None:
    fake.settings.latency = 0.05  # each invoice takes a moment, as MyFatoorah's do
    async with shop(serve, ollama, db_url, fake, webhooks=False, max_pending_orders=2) as served:
        user = await register_user(served)

        async def attempt() -> int:
            body = {"product": "pack-5000"}
            async with served.request("POST", "/api/billing/checkout", json=body, headers=user.headers) as resp:
                return resp.status

        answers = await asyncio.gather(*(attempt() for _ in range(12)))
        assert 1 <= answers.count(201) <= 2 and set(answers) <= {201, 429}
        assert len(fake.invoices) == answers.count(201)
        async with served.gateway.database.connect() as conn:
            query = sa.select(sa.func.count()).select_from(orders).where(orders.c.status == "pending")
            assert await conn.scalar(query) == answers.count(201)


async def test_myfatoorah_down_at_the_return_is_asked_once_and_the_payer_sees_confirming(
    serve: Any, ollama: Any, db_url: str, fake: FakeMyFatoorah
) -> None:
    # Retried at the return, a slow MyFatoorah (20 s timeout, three attempts) kept the payer waiting a
    # minute, past a proxy's usual 60 s: the return asks once and leaves the rest to the job.
    async with shop(serve, ollama, db_url, fake, webhooks=False) as served:
        user = await register_user(served)
        order = await checkout(served, user, "pack-5000")
        fake.settings.fail_status = 503
        assert (await pay(served, fake, order))[1]["result"] == "confirming"
        assert fake.failures == 1
        assert (await order_row(served, order["id"])).status == "pending"
