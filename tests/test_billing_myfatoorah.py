"""The MyFatoorah v2 client against the fake: typed answers in fils, typed errors, retries only where safe."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest

from plugins.billing.gateway_client import NotConfigured, Refused, Throttled, Unreachable
from plugins.billing.myfatoorah import MyFatoorahClient
from tests.fakes.myfatoorah import FakeMyFatoorah, FakeSettings, run_fake
from tests.support.myfatoorah import checkout

pytestmark = pytest.mark.asyncio


TOKEN = "the-operators-live-token"


@pytest.fixture
async def fake() -> AsyncIterator[FakeMyFatoorah]:
    async with run_fake(FakeSettings(token=TOKEN)) as f:
        yield f


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def client(fake: FakeMyFatoorah, http: aiohttp.ClientSession, token: str | None = TOKEN) -> MyFatoorahClient:
    return MyFatoorahClient(session=http, base_url=fake.url, token=token, timeout_seconds=1, wait_seconds=0.01)


async def paid_invoice(fake: FakeMyFatoorah, http: aiohttp.ClientSession, amount: int = 12000) -> tuple[str, str]:
    invoice = await client(fake, http).execute(request=checkout(amount), method_id=1)
    async with http.get(invoice.payment_url, allow_redirects=False) as r:
        payment_id = r.headers["Location"].split("paymentId=")[1].split("&")[0]
    return invoice.invoice_id, payment_id


async def test_methods_and_checkout_in_fils(fake: FakeMyFatoorah, http: aiohttp.ClientSession) -> None:
    mf = client(fake, http)
    methods = await mf.payment_methods(amount_fils=5001)
    assert [(m.code, m.total_fils, m.service_charge_fils) for m in methods] == [("kn", 5001, 0), ("vm", 5001, 0)]
    path, sent = fake.calls[-1]
    assert (path, str(sent["InvoiceAmount"]), sent["CurrencyIso"]) == ("/v2/InitiatePayment", "5.001", "KWD")
    invoice = await mf.execute(request=checkout(5001, "ORD-9"), method_id=methods[0].id)
    assert invoice.reference == "ORD-9" and invoice.payment_url.startswith(fake.url)
    path, sent = fake.calls[-1]
    assert path == "/v2/ExecutePayment"
    assert str(sent["InvoiceValue"]) == "5.001" and sent["CustomerReference"] == "ORD-9" and sent["Language"] == "ar"
    link = await mf.payment_link(request=checkout(2500))
    assert fake.calls[-1][1]["NotificationOption"] == "LNK" and link.payment_url.startswith(fake.url)


async def test_status_by_payment_and_invoice_id(fake: FakeMyFatoorah, http: aiohttp.ClientSession) -> None:
    invoice_id, payment_id = await paid_invoice(fake, http)
    mf = client(fake, http)
    for key, kind in ((payment_id, "PaymentId"), (invoice_id, "InvoiceId")):
        status = await mf.status(key=key, key_type=kind)  # type: ignore[arg-type]
        assert (status.status, status.amount_fils, status.reference, status.currency) == ("paid", 12000, "ORD-1", "KWD")
        assert status.paid is not None and status.paid.payment_id == payment_id


async def test_paid_transaction_is_found_after_a_failed_one(fake: FakeMyFatoorah, http: aiohttp.ClientSession) -> None:
    invoice = await client(fake, http).execute(request=checkout(), method_id=1)
    for query in ("?result=fail", ""):
        async with http.get(invoice.payment_url + query, allow_redirects=False):
            pass
    status = await client(fake, http).status(key=invoice.invoice_id, key_type="InvoiceId")
    assert [t.status for t in status.transactions] == ["failed", "success"]
    assert status.paid is status.transactions[1]


async def test_pending_and_mismatch_are_reported_not_hidden(fake: FakeMyFatoorah, http: aiohttp.ClientSession) -> None:
    fake.settings.pending, fake.settings.amount_offset_fils = True, 1
    invoice_id, _ = await paid_invoice(fake, http, 5000)
    status = await client(fake, http).status(key=invoice_id, key_type="InvoiceId")
    assert status.status == "pending" and status.paid is None and status.currency is None
    assert status.amount_fils == 5001


async def test_refund(fake: FakeMyFatoorah, http: aiohttp.ClientSession) -> None:
    invoice_id, _ = await paid_invoice(fake, http)
    refund = await client(fake, http).refund(invoice_id=invoice_id, amount_fils=2000, comment="goodwill")
    assert refund.amount_fils == 2000 and refund.refund_id
    assert str(fake.calls[-1][1]["Amount"]) == "2.000" and fake.calls[-1][1]["ServiceChargeOnCustomer"] is False
    with pytest.raises(Refused) as refused:
        await client(fake, http).refund(invoice_id=invoice_id, amount_fils=10001, comment="too much")
    assert "exceeds" in " ".join(refused.value.details) and "exceeds" not in str(refused.value)


async def test_no_token_and_rejected_token(fake: FakeMyFatoorah, http: aiohttp.ClientSession) -> None:
    with pytest.raises(NotConfigured):
        await client(fake, http, token=None).payment_methods(amount_fils=1000)
    assert fake.calls == []
    with pytest.raises(NotConfigured):
        await client(fake, http, token="wrong").payment_methods(amount_fils=1000)


async def test_refusal_keeps_validation_texts_out_of_the_message(
    fake: FakeMyFatoorah, http: aiohttp.ClientSession
) -> None:
    with pytest.raises(Refused) as refused:
        await client(fake, http).execute(request=checkout(), method_id=99)
    assert str(refused.value) == "MyFatoorah refused the request"
    assert any("PaymentMethodId" in d for d in refused.value.details)


async def test_status_and_initiate_retry_through_a_short_outage(
    fake: FakeMyFatoorah, http: aiohttp.ClientSession
) -> None:
    invoice_id, _ = await paid_invoice(fake, http)
    fake.settings.fail_status, fake.settings.fail_times = 503, 2
    assert (await client(fake, http).status(key=invoice_id, key_type="InvoiceId")).status == "paid"
    assert fake.failures == 2
    fake.failures, fake.settings.fail_status, fake.settings.fail_times = 0, 403, 0  # a blocked IP: an HTML page
    with pytest.raises(Unreachable):
        await client(fake, http).payment_methods(amount_fils=1000)
    assert fake.failures == 3  # three attempts, then the error


async def test_execute_and_refund_are_never_retried(fake: FakeMyFatoorah, http: aiohttp.ClientSession) -> None:
    invoice_id, _ = await paid_invoice(fake, http)
    fake.settings.fail_status, fake.settings.fail_times = 502, 1
    with pytest.raises(Unreachable):
        await client(fake, http).execute(request=checkout(), method_id=1)
    fake.failures, fake.settings.fail_times = 0, 1
    with pytest.raises(Unreachable):
        await client(fake, http).refund(invoice_id=invoice_id, amount_fils=1, comment="")
    assert fake.failures == 1 and len(fake.invoices) == 1 and fake.refunds == {}


async def test_slow_down_and_throttled(fake: FakeMyFatoorah, http: aiohttp.ClientSession) -> None:
    fake.settings.latency = 2
    with pytest.raises(Unreachable):
        await MyFatoorahClient(session=http, base_url=fake.url, token=TOKEN, timeout_seconds=0.2, attempts=1).status(
            key="1", key_type="InvoiceId"
        )
    await fake.go_down()
    with pytest.raises(Unreachable):
        await client(fake, http).status(key="1", key_type="InvoiceId")
    await fake.come_up()
    fake.settings.latency, fake.settings.status_limit = 0, 1
    with pytest.raises(Refused):
        await client(fake, http).status(key="1", key_type="InvoiceId")  # unknown invoice: a "no"
    with pytest.raises(Throttled):
        await client(fake, http).status(key="1", key_type="InvoiceId")


async def test_hostile_keys_and_amounts_never_leave(fake: FakeMyFatoorah, http: aiohttp.ClientSession) -> None:
    mf = client(fake, http)
    for key in ("", "1 OR 1=1", "../x", "٣٤٥", "9" * 65):
        with pytest.raises(Refused):
            await mf.status(key=key, key_type="PaymentId")
    for amount in (0, -1, 10**12):
        with pytest.raises(ValueError):
            await mf.execute(request=checkout(amount), method_id=1)
    assert fake.calls == []


async def test_token_never_logged(
    fake: FakeMyFatoorah, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="plugins.billing.myfatoorah")
    fake.settings.fail_status = 500
    mf = client(fake, http)
    with pytest.raises(Unreachable) as err:
        await mf.status(key="1", key_type="InvoiceId")
    with pytest.raises(Refused):
        fake.settings.fail_status = None
        await mf.execute(request=checkout(), method_id=99)
    assert caplog.records
    assert TOKEN not in caplog.text and TOKEN not in str(err.value) and TOKEN not in repr(mf)
