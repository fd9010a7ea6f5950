"""Attacks on billing by a paying customer: one cheap payment shown for a dearer order (the return URL with
another order's paymentId), their own or someone else's. Nothing but the order that was paid is credited."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.fakes.myfatoorah import FakeMyFatoorah, FakeSettings, run_fake
from tests.support.billing import WEBHOOK_SECRET, checkout, ledger_rows, order_row, pay, returned, shop
from tests.support.portal import register_user


@pytest.fixture
async def fake() -> AsyncIterator[FakeMyFatoorah]:
    async with run_fake(FakeSettings(webhook_secret=WEBHOOK_SECRET, webhook_retry_seconds=0.05)) as running:
        yield running


async def test_a_cheap_payment_returned_for_a_dear_order_credits_only_the_cheap_one(
    serve: Any, ollama: Any, db_url: str, fake: FakeMyFatoorah
) -> None:
    async with shop(serve, ollama, db_url, fake) as served:
        buyer = await register_user(served, locale="en")
        other = await register_user(served, locale="en")
        cheap = await checkout(served, buyer, "pack-5000")
        dear = await checkout(served, buyer, "pack-50000")
        someone_elses = await checkout(served, other, "pack-50000")
        status, result = await pay(served, fake, cheap)
        assert (status, result["result"]) == (303, "paid")
        payment_id = (await order_row(served, cheap["id"])).payment_id
        for order in (dear, someone_elses):
            for path in ("callback", "error"):
                await returned(served, f"/api/billing/{path}?order={order['id']}&paymentId={payment_id}")
        await fake.webhooks_sent()
        await served.gateway.drain()
        assert (await order_row(served, dear["id"])).status == "pending"
        assert (await order_row(served, someone_elses["id"])).status == "pending"
        assert [r.amount_milli for r in await ledger_rows(served, buyer.account_id)] == [5_000_000]
        assert await ledger_rows(served, other.account_id) == []
