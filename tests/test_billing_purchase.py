"""A purchase end to end, on SQLite and MariaDB, against the fake MyFatoorah: checkout, the payment page,
the return to the gateway and the webhook, credited exactly once whatever arrives and in whatever order."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import pytest

from tests.fakes.myfatoorah import FakeMyFatoorah, FakeSettings, run_fake
from tests.support.billing import (
    WEBHOOK_PATH,
    WEBHOOK_SECRET,
    account_row,
    checkout,
    get_order,
    ledger_rows,
    order_row,
    pay,
    returned,
    shop,
)
from tests.support.portal import bearer, create_key, register_user
from tests.support.recorder import Recorder


@pytest.fixture
async def fake() -> AsyncIterator[FakeMyFatoorah]:
    async with run_fake(FakeSettings(webhook_secret=WEBHOOK_SECRET, webhook_retry_seconds=0.05)) as running:
        yield running


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


async def test_a_pack_bought_and_paid_is_credited_once_with_a_receipt(
    serve: Any, ollama: Any, db_url: str, fake: FakeMyFatoorah
) -> None:
    recorder = Recorder()
    async with shop(serve, ollama, db_url, fake, plugins=[recorder]) as served:
        user = await register_user(served, locale="en", name="Noura Al-Sabah")
        order = await checkout(served, user, "pack-5000")
        assert order["status"] == "pending" and order["amount_fils"] == 5000 and order["credits"] == 5000
        assert order["payment_url"].startswith(fake.url) and order["id"].startswith("ord_")
        (call,) = [body for path, body in fake.calls if path == "/v2/SendPayment"]
        assert call["CustomerReference"] == order["id"] and call["Language"] == "en"
        assert call["CallBackUrl"] == f"https://portal.example.test/api/billing/callback?order={order['id']}"

        status, result = await pay(served, fake, order)
        assert status == 303 and result == {"order": order["id"], "result": "paid"}
        await fake.webhooks_sent()
        await served.gateway.drain()

        (row,) = await ledger_rows(served, user.account_id)
        assert (row.kind, row.amount_milli, row.reference) == ("topup", 5_000_000, f"billing:{order['id']}")
        status, body = await get_order(served, user, order["id"])
        paid = body["order"]
        year = datetime.now(UTC).year
        assert status == 200 and paid["status"] == "paid" and paid["receipt_number"] == f"R-{year}-000001"
        assert paid["invoice_id"] == order["invoice_id"] and paid["paid_at"] is not None
        assert "payment_url" not in paid
        receipt = paid["receipt"]
        assert receipt["seller"] == {"ar": "رسايل", "en": "Resayil"}
        assert receipt["buyer"] == {"name": "Noura Al-Sabah", "email": user.email}
        assert receipt["item"] == {"ar": "٥٬٠٠٠ رصيد", "en": "5,000 credits"}
        assert receipt["amount"] == {"ar": "٥٫٠٠٠ د.ك", "en": "5.000 KWD"} and receipt["method"] == "KNET"
        # The webhook arrived too, and was answered 200: it found the order paid.
        assert [d.status for d in fake.deliveries] == [200]
        await recorder.wait_events(2)
        (event,) = recorder.named("topup.paid")
        assert event["order_id"] == order["id"] and event["credits_milli"] == 5_000_000
        assert event["balance_milli"] == 5_000_000 and event["receipt_number"] == paid["receipt_number"]
        assert recorder.named("subscription.activated") == []


async def test_a_plan_sets_the_tier_a_renewal_extends_from_expiry_and_an_upgrade_starts_now(
    serve: Any, ollama: Any, db_url: str, fake: FakeMyFatoorah
) -> None:
    recorder = Recorder()
    async with shop(serve, ollama, db_url, fake, webhooks=False, plugins=[recorder]) as served:
        user = await register_user(served)
        first = await checkout(served, user, "pro")
        assert (await pay(served, fake, first))[1]["result"] == "paid"
        account = await account_row(served, user.account_id)
        assert account.tier == "pro"
        assert abs(account.plan_expires_at - (now() + timedelta(days=30))) < timedelta(minutes=1)
        first_expiry = account.plan_expires_at

        renewal = await checkout(served, user, "pro")
        assert (await pay(served, fake, renewal))[1]["result"] == "paid"
        account = await account_row(served, user.account_id)
        assert account.tier == "pro" and account.plan_expires_at == first_expiry + timedelta(days=30)

        upgrade = await checkout(served, user, "enterprise")
        assert (await pay(served, fake, upgrade))[1]["result"] == "paid"
        account = await account_row(served, user.account_id)
        assert account.tier == "enterprise"
        assert abs(account.plan_expires_at - (now() + timedelta(days=30))) < timedelta(minutes=1)

        rows = await ledger_rows(served, user.account_id)
        assert [(r.kind, r.amount_milli) for r in rows] == [
            ("subscription", 5_000_000),
            ("subscription", 5_000_000),
            ("subscription", 20_000_000),
        ]
        await served.gateway.drain()
        await recorder.wait_events(4)
        activated = recorder.named("subscription.activated")
        assert [(e["tier"], e["order_id"]) for e in activated] == [
            ("pro", first["id"]),
            ("pro", renewal["id"]),
            ("enterprise", upgrade["id"]),
        ]
        (enterprise,) = recorder.named("enterprise.registered")
        assert enterprise["account_id"] == user.account_id and enterprise["email"] == user.email
        _, body = await get_order(served, user, renewal["id"])
        assert body["order"]["plan_expires_at"].startswith((first_expiry + timedelta(days=30)).isoformat()[:16])


async def test_a_paid_plan_reaches_the_accounts_api_keys_at_once(
    serve: Any, ollama: Any, sqlite_url: str, fake: FakeMyFatoorah
) -> None:
    async with shop(serve, ollama, sqlite_url, fake, webhooks=False) as served:
        user = await register_user(served)
        key = bearer(await create_key(served, user, scopes=("read",)))

        async def models() -> list[str]:
            async with served.request("GET", "/v1/models", headers=key) as resp:
                assert resp.status == 200
                return [m["id"] for m in (await resp.json())["data"]]

        assert "deepseek-v3.1:671b-cloud" not in await models()  # basic: cached for key_cache_seconds
        assert (await pay(served, fake, await checkout(served, user, "pro")))[1]["result"] == "paid"
        assert "deepseek-v3.1:671b-cloud" in await models()


async def test_callback_and_webhook_each_twice_credit_once(
    serve: Any, ollama: Any, db_url: str, fake: FakeMyFatoorah
) -> None:
    recorder = Recorder()
    async with shop(serve, ollama, db_url, fake, plugins=[recorder]) as served:
        fake.settings.webhook_copies = 2
        fake.settings.webhook_delay = (
            1.0  # the webhooks arrive after the return has confirmed (with room for a loaded CI machine)
        )
        user = await register_user(served)
        order = await checkout(served, user, "pack-15000")
        status, result = await pay(served, fake, order)
        assert (status, result["result"]) == (303, "paid")
        payment_id = (await order_row(served, order["id"])).payment_id
        assert await returned(served, f"/api/billing/callback?order={order['id']}&paymentId={payment_id}") == (
            303,
            {"order": order["id"], "result": "paid"},
        )
        await fake.webhooks_sent()
        # Each webhook once more, as MyFatoorah's retry would send it.
        body, headers = fake.deliveries[0].body, fake.deliveries[0].headers
        async with served.request("POST", WEBHOOK_PATH, data=body, headers=headers) as resp:
            assert resp.status == 200 and (await resp.json())["ignored"] == "duplicate"
        assert [d.status for d in fake.deliveries] == [200, 200]
        await served.gateway.drain()

        (row,) = await ledger_rows(served, user.account_id)
        assert row.amount_milli == 15_000_000
        await recorder.wait_events(2)
        assert len(recorder.named("topup.paid")) == 1
        assert [body for path, body in fake.calls if path == "/v2/GetPaymentStatus"].__len__() == 1


async def test_forged_unsigned_and_replayed_webhooks_change_nothing(
    serve: Any, ollama: Any, db_url: str, fake: FakeMyFatoorah
) -> None:
    async with shop(serve, ollama, db_url, fake) as served:
        fake.settings.webhook_bad_signature = True
        fake.settings.webhook_retries = 0
        user = await register_user(served)
        order = await checkout(served, user, "pack-5000")
        (invoice,) = fake.invoices.values()
        fake.pay(invoice)  # paid at MyFatoorah; the payer never came back, a forger signs the webhook
        await fake.webhooks_sent()
        assert [d.status for d in fake.deliveries] == [401]
        forged = fake.deliveries[0]
        unsigned = {k: v for k, v in forged.headers.items() if k != "MyFatoorah-Signature"}
        async with served.request("POST", WEBHOOK_PATH, data=forged.body, headers=unsigned) as resp:
            assert resp.status == 401 and (await resp.json())["error"]["code"] == "invalid_signature"
        assert (await order_row(served, order["id"])).status == "pending"
        assert await ledger_rows(served, user.account_id) == []
        assert not [path for path, _ in fake.calls if path == "/v2/GetPaymentStatus"]

        # The genuine webhook, then a replay of it under another (unsigned) Event.Reference.
        fake.settings.webhook_bad_signature = False
        fake.notify_payment(invoice, invoice.transactions[-1], success=True)
        await fake.webhooks_sent()
        genuine = fake.deliveries[-1]
        assert genuine.status == 200
        assert (await order_row(served, order["id"])).status == "paid"
        replayed = genuine.body.replace(b'"Reference":"WH-', b'"Reference":"XX-')
        assert replayed != genuine.body
        async with served.request("POST", WEBHOOK_PATH, data=replayed, headers=genuine.headers) as resp:
            assert resp.status == 200 and (await resp.json())["ignored"] == "duplicate"
        assert len(await ledger_rows(served, user.account_id)) == 1


async def test_a_late_failed_event_after_paid_leaves_the_order_paid(
    serve: Any, ollama: Any, db_url: str, fake: FakeMyFatoorah
) -> None:
    async with shop(serve, ollama, db_url, fake) as served:
        user = await register_user(served)
        order = await checkout(served, user, "pack-5000")
        (invoice,) = fake.invoices.values()
        failed_id = fake.pay(invoice, success=False)  # a declined card first
        assert (await pay(served, fake, order))[1]["result"] == "paid"
        await fake.webhooks_sent()
        failed = next(t for t in invoice.transactions if t["PaymentId"] == failed_id)
        fake.notify_payment(invoice, failed, success=False)  # the FAILED webhook arrives last
        await fake.webhooks_sent()
        assert all(d.status == 200 for d in fake.deliveries)
        assert await returned(served, f"/api/billing/error?order={order['id']}&paymentId={failed_id}") == (
            303,
            {"order": order["id"], "result": "paid"},
        )
        assert (await order_row(served, order["id"])).status == "paid"
        assert len(await ledger_rows(served, user.account_id)) == 1


async def test_a_declined_payment_fails_the_order_and_a_retry_on_it_is_credited(
    serve: Any, ollama: Any, db_url: str, fake: FakeMyFatoorah
) -> None:
    # The payer retries at once here; a person on MyFatoorah's page takes longer than the return's cooldown.
    async with shop(serve, ollama, db_url, fake, webhooks=False, callback_check_seconds=0.001) as served:
        user = await register_user(served)
        order = await checkout(served, user, "pack-5000")
        status, result = await pay(served, fake, order, result="fail")
        assert (status, result["result"]) == (303, "failed")
        assert await ledger_rows(served, user.account_id) == []
        assert (await pay(served, fake, order))[1]["result"] == "paid"
        assert len(await ledger_rows(served, user.account_id)) == 1


async def test_an_amount_mismatch_is_disputed_and_credits_nothing(
    serve: Any, ollama: Any, db_url: str, fake: FakeMyFatoorah
) -> None:
    recorder = Recorder()
    async with shop(serve, ollama, db_url, fake, webhooks=False, plugins=[recorder]) as served:
        fake.settings.amount_offset_fils = -1  # the invoice MyFatoorah made is one fils short
        user = await register_user(served)
        order = await checkout(served, user, "pack-5000")
        status, result = await pay(served, fake, order)
        assert (status, result["result"]) == (303, "disputed")
        assert await ledger_rows(served, user.account_id) == []
        row = await order_row(served, order["id"])
        assert (row.status, row.confirmed_fils, row.receipt_number) == ("disputed", 4999, None)
        await served.gateway.drain()
        await recorder.wait_events(1)
        (event,) = recorder.named("billing.disputed")
        assert (event["amount_fils"], event["confirmed_fils"], event["order_id"]) == (5000, 4999, order["id"])
        # Asking again changes nothing: disputed never credits.
        await returned(served, f"/api/billing/callback?order={order['id']}&paymentId={row.payment_id}")
        assert await ledger_rows(served, user.account_id) == []


async def test_myfatoorah_down_at_the_callback_then_the_job_credits_the_order(
    serve: Any, ollama: Any, db_url: str, fake: FakeMyFatoorah
) -> None:
    async with shop(serve, ollama, db_url, fake, webhooks=False) as served:
        user = await register_user(served)
        order = await checkout(served, user, "pack-5000")
        (invoice,) = fake.invoices.values()
        payment_id = fake.pay(invoice)
        fake.settings.fail_status = 503
        status, result = await returned(served, f"/api/billing/callback?order={order['id']}&paymentId={payment_id}")
        assert (status, result) == (303, {"order": order["id"], "result": "confirming"})
        status, body = await get_order(served, user, order["id"])
        assert body["order"]["status"] == "pending"

        plugin = served.gateway.plugin("billing")
        assert await plugin_check(plugin) == 1  # still down: nothing changes, asked again later
        assert (await order_row(served, order["id"])).status == "pending"
        fake.settings.fail_status = None
        assert await plugin_check(plugin) == 0  # not due yet: the backoff holds
        await make_due(served, order["id"])
        assert await plugin_check(plugin) == 1
        assert (await order_row(served, order["id"])).status == "paid"
        assert len(await ledger_rows(served, user.account_id)) == 1


async def test_the_job_backs_off_caps_its_calls_and_expires_unpaid_orders(
    serve: Any, ollama: Any, db_url: str, fake: FakeMyFatoorah
) -> None:
    async with shop(serve, ollama, db_url, fake, webhooks=False, max_status_calls_per_run=2) as served:
        user = await register_user(served)
        references = [(await checkout(served, user, "pack-5000"))["id"] for _ in range(3)]
        plugin = served.gateway.plugin("billing")
        assert await plugin_check(plugin) == 0  # none due yet
        for reference in references:
            await make_due(served, reference)
        calls = len(fake.calls)
        assert await plugin_check(plugin) == 2
        assert len(fake.calls) - calls == 2
        rows = [await order_row(served, r) for r in references]
        assert sorted(r.check_attempts for r in rows) == [0, 1, 1]
        assert all(r.next_check_at > now() for r in rows if r.check_attempts == 1)

        await make_due(served, references[0], expired=True)
        assert await plugin_check(plugin) == 2
        assert (await order_row(served, references[0])).status == "expired"
        # A payment that arrives after the order expired is still credited.
        fake.settings.webhook_url = served.url + WEBHOOK_PATH
        invoice = fake.invoices[int((await order_row(served, references[0])).invoice_id)]
        fake.pay(invoice)
        await fake.webhooks_sent()
        assert (await order_row(served, references[0])).status == "paid"


async def plugin_check(plugin: Any) -> int:
    from plugins.billing.pending import check_pending

    return await check_pending(plugin)


async def make_due(served: Any, reference: str, *, expired: bool = False) -> None:
    from plugins.billing.tables import orders

    past = now() - timedelta(seconds=1)
    values = {"next_check_at": past} | ({"expires_at": past} if expired else {})
    async with served.gateway.database.begin() as conn:
        await conn.execute(orders.update().where(orders.c.reference == reference).values(**values))


@pytest.mark.parametrize("version", ["v1", "v2"])
async def test_a_webhook_alone_credits_a_payment_whose_payer_never_came_back(
    serve: Any, ollama: Any, db_url: str, fake: FakeMyFatoorah, version: Literal["v1", "v2"]
) -> None:
    fake.settings.webhook_version = version
    async with shop(serve, ollama, db_url, fake) as served:
        user = await register_user(served)
        order = await checkout(served, user, "pack-50000")
        (invoice,) = fake.invoices.values()
        fake.pay(invoice)
        await fake.webhooks_sent()
        assert [d.status for d in fake.deliveries] == [200]
        assert (await order_row(served, order["id"])).status == "paid"
        assert [r.amount_milli for r in await ledger_rows(served, user.account_id)] == [50_000_000]
