"""A payer who pays again on the same invoice, on SQLite and MariaDB, against the fake MyFatoorah: a paid
retry after a declined card is credited even when nothing but the pending-order job hears of it, and an
invoice paid twice is credited once and reported to the admins (`billing.mismatch`, `paid_twice`) once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

from edge.clock import utc_now as now
from plugins.billing.pending import check_pending
from plugins.billing.tables import orders
from tests.fakes.myfatoorah import FakeMyFatoorah
from tests.support.billing import (
    checkout,
    fake_myfatoorah,
    get_order,
    ledger_rows,
    mismatches,
    order_row,
    pay,
    returned,
    shop,
)
from tests.support.portal import register_user


@pytest.fixture
async def fake() -> AsyncIterator[FakeMyFatoorah]:
    async with fake_myfatoorah() as running:
        yield running


async def move(served: Any, reference: str, **values: Any) -> None:
    async with served.gateway.database.begin() as conn:
        await conn.execute(orders.update().where(orders.c.reference == reference).values(**values))


async def test_a_paid_retry_within_the_return_cooldown_after_a_decline_is_credited_by_the_job(
    serve: Any, ollama: Any, db_url: str, fake: FakeMyFatoorah
) -> None:
    # No webhook, and the retry's return comes within `callback_check_seconds` (10) of the declined one's.
    async with shop(serve, ollama, db_url, fake, webhooks=False, first_check_seconds=0.001) as served:
        user = await register_user(served)
        order = await checkout(served, user, "pack-5000")
        assert await pay(served, fake, order, result="fail") == (303, {"order": order["id"], "result": "failed"})
        assert await pay(served, fake, order) == (303, {"order": order["id"], "result": "confirming"})
        assert (await get_order(served, user, order["id"]))[1]["order"]["status"] == "failed"
        assert await ledger_rows(served, user.account_id) == []

        plugin = served.gateway.plugin("billing")
        assert await check_pending(plugin) == 1
        status, body = await get_order(served, user, order["id"])
        assert status == 200 and body["order"]["status"] == "paid" and body["order"]["receipt_number"]
        assert [r.amount_milli for r in await ledger_rows(served, user.account_id)] == [5_000_000]
        # Paid is final: the job has nothing more to ask, and a late return changes nothing.
        assert await check_pending(plugin) == 0
        failed_id = fake.invoices[int(order["invoice_id"])].transactions[0]["PaymentId"]
        status, result = await returned(served, f"/api/billing/error?order={order['id']}&paymentId={failed_id}")
        assert (status, result["result"]) == (303, "paid")
        assert len(await ledger_rows(served, user.account_id)) == 1


async def test_the_job_asks_about_failed_orders_with_backoff_and_its_cap_until_they_expire(
    serve: Any, ollama: Any, db_url: str, fake: FakeMyFatoorah
) -> None:
    async with shop(serve, ollama, db_url, fake, webhooks=False, max_status_calls_per_run=1) as served:
        user = await register_user(served)
        declined = [await checkout(served, user, "pack-5000") for _ in range(2)]
        for order in declined:
            assert (await pay(served, fake, order, result="fail"))[1]["result"] == "failed"
            await move(served, order["id"], next_check_at=now() - timedelta(seconds=1))
        plugin = served.gateway.plugin("billing")
        asked = len(fake.calls)
        assert await check_pending(plugin) == 1  # the per-run cap
        assert await check_pending(plugin) == 1
        assert await check_pending(plugin) == 0  # both backing off now
        assert len(fake.calls) - asked == 2
        rows = [await order_row(served, order["id"]) for order in declined]
        assert [(r.status, r.check_attempts) for r in rows] == [("failed", 1), ("failed", 1)]
        assert all(r.next_check_at > now() + timedelta(seconds=30) for r in rows)

        # Past its expiry, a failed order is asked about once more, then no longer.
        first = declined[0]["id"]
        await move(served, first, next_check_at=now() - timedelta(seconds=1), expires_at=now() - timedelta(seconds=1))
        assert await check_pending(plugin) == 1
        row = await order_row(served, first)
        assert (row.status, row.next_check_at) == ("failed", None)
        assert await check_pending(plugin) == 0


async def test_a_second_payment_on_a_paid_invoice_is_reported_once_and_credits_nothing(
    serve: Any, ollama: Any, db_url: str, fake: FakeMyFatoorah
) -> None:
    async with shop(serve, ollama, db_url, fake) as served:
        user = await register_user(served)
        order = await checkout(served, user, "pack-5000")
        assert (await pay(served, fake, order))[1]["result"] == "paid"
        await fake.webhooks_sent()
        receipt = (await order_row(served, order["id"])).receipt_number
        assert await mismatches(served) == []

        invoice = fake.invoices[int(order["invoice_id"])]
        fake.pay(invoice)  # the payer pays the invoice again (a second tab): its webhook arrives
        await fake.webhooks_sent()
        assert [d.status for d in fake.deliveries] == [200, 200]
        row = await order_row(served, order["id"])
        assert (row.status, row.receipt_number) == ("paid", receipt)
        assert [r.amount_milli for r in await ledger_rows(served, user.account_id)] == [5_000_000]
        (event,) = await mismatches(served)
        assert (event["kind"], event["order_id"], event["account_id"]) == ("paid_twice", order["id"], user.account_id)
        assert (event["amount_fils"], event["provider_fils"], event["order_status"]) == (5000, 10_000, "paid")
        assert event["invoice_id"] == order["invoice_id"]


async def test_an_invoice_paid_twice_before_any_confirmation_is_credited_once_and_reported_once(
    serve: Any, ollama: Any, db_url: str, fake: FakeMyFatoorah
) -> None:
    async with shop(serve, ollama, db_url, fake, webhooks=False) as served:
        user = await register_user(served)
        order = await checkout(served, user, "pack-5000")
        invoice = fake.invoices[int(order["invoice_id"])]
        first, second = fake.pay(invoice), fake.pay(invoice)
        status, result = await returned(served, f"/api/billing/callback?order={order['id']}&paymentId={first}")
        assert (status, result["result"]) == (303, "paid")
        # The second payment's webhook then makes the gateway confirm the same answer again.
        fake.settings.webhook_url = served.url + "/api/billing/webhooks/myfatoorah"
        fake.notify_payment(invoice, invoice.transactions[1], success=True)
        await fake.webhooks_sent()
        assert [d.status for d in fake.deliveries] == [200]
        assert invoice.transactions[1]["PaymentId"] == second
        assert [r.amount_milli for r in await ledger_rows(served, user.account_id)] == [5_000_000]
        (event,) = await mismatches(served)
        assert (event["kind"], event["order_id"], event["provider_fils"]) == ("paid_twice", order["id"], 10_000)
