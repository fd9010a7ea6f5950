"""The fake MyFatoorah pins the protocol facts of shared/reference/myfatoorah.md, quirks included."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import aiohttp
import orjson
import pytest

from plugins.billing import webhooks
from tests.fakes import myfatoorah_events as events
from tests.fakes.myfatoorah import DEFAULT_TOKEN, FakeMyFatoorah, run_fake
from tests.support.myfatoorah import Receiver, webhook_receiver

pytestmark = pytest.mark.asyncio

AUTH = {"Authorization": f"Bearer {DEFAULT_TOKEN}"}
SECRET = "wh-secret"
EXECUTE: dict[str, Any] = {
    "InvoiceValue": Decimal("5.000"),
    "PaymentMethodId": 1,
    "CustomerName": "Buyer",
    "CallBackUrl": "http://127.0.0.1:9/cb",
    "ErrorUrl": "http://127.0.0.1:9/err",
    "Language": "ar",
    "CustomerReference": "ORD-7",
    "InvoiceItems": [{"ItemName": "pack", "Quantity": 1, "UnitPrice": Decimal("5.000")}],
}


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with webhook_receiver() as r:
        yield r


@pytest.fixture
async def fake(receiver: Receiver) -> AsyncIterator[FakeMyFatoorah]:
    async with run_fake() as f:
        f.settings.webhook_url = receiver.url
        f.settings.webhook_secret = SECRET
        yield f


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def call(http: aiohttp.ClientSession, url: str, body: dict[str, Any], auth: bool = True) -> tuple[int, Any, str]:
    raw = _numbers(body)
    async with http.post(url, data=raw, headers=AUTH if auth else {}) as r:
        text = await r.text()
        return r.status, (json.loads(text, parse_float=Decimal) if text.startswith("{") else None), text


def _numbers(body: Any) -> str:
    """JSON with Decimals written as the numbers they are (5.000 stays 5.000)."""
    if isinstance(body, Decimal):
        return str(body)
    if isinstance(body, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{_numbers(v)}" for k, v in body.items()) + "}"
    if isinstance(body, list):
        return "[" + ",".join(_numbers(v) for v in body) + "]"
    return json.dumps(body)


async def pay(http: aiohttp.ClientSession, url: str, query: str = "") -> str:
    async with http.get(url + query, allow_redirects=False) as r:
        assert r.status == 302
        return r.headers["Location"]


async def test_bearer_token_required_and_401_is_bare(fake: FakeMyFatoorah, http: aiohttp.ClientSession) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": DEFAULT_TOKEN}):
        async with http.post(f"{fake.url}/v2/InitiatePayment", data="{}", headers=headers) as r:
            assert r.status == 401
            assert await r.read() == b""
            assert r.headers["WWW-Authenticate"] == "Bearer"


async def test_initiate_lists_methods_with_three_decimal_amounts(
    fake: FakeMyFatoorah, http: aiohttp.ClientSession
) -> None:
    async with http.post(
        f"{fake.url}/v2/InitiatePayment", data='{"InvoiceAmount":5.000,"CurrencyIso":"KWD"}', headers=AUTH
    ) as r:
        assert r.status == 200
        raw = await r.text()
    assert '"TotalAmount":5.000' in raw and '"ServiceCharge":0.000' in raw
    body = json.loads(raw, parse_float=Decimal)
    assert body["IsSuccess"] is True and body["ValidationErrors"] is None
    codes = {m["PaymentMethodCode"]: m for m in body["Data"]["PaymentMethods"]}
    assert set(codes) == {"kn", "vm"}
    assert set(codes["kn"]) >= {"PaymentMethodId", "PaymentMethodEn", "PaymentMethodAr", "ServiceCharge", "TotalAmount"}
    assert codes["kn"]["IsDirectPayment"] is False


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"InvoiceValue": "5.000"}, "InvoiceValue"),  # a string is not a number
        ({"InvoiceValue": Decimal("5.0001")}, "InvoiceValue"),  # not a whole number of fils
        ({"InvoiceValue": 0}, "InvoiceValue"),
        ({"PaymentMethodId": 99}, "PaymentMethodId"),
        ({"CallBackUrl": "http://127.0.0.1/" + "x" * 250}, "CallBackUrl"),
        ({"Language": "fr"}, "Language"),
        ({"DisplayCurrencyIso": "USD"}, "DisplayCurrencyIso"),
    ],
)
async def test_execute_refuses_bad_fields_in_the_envelope(
    fake: FakeMyFatoorah, http: aiohttp.ClientSession, change: dict[str, Any], field: str
) -> None:
    status, body, _ = await call(http, f"{fake.url}/v2/ExecutePayment", {**EXECUTE, **change})
    assert status == 400
    assert body["IsSuccess"] is False and body["Data"] is None
    assert [e["Name"] for e in body["ValidationErrors"]] == [field]
    assert fake.invoices == {}


async def test_field_names_are_case_sensitive(fake: FakeMyFatoorah, http: aiohttp.ClientSession) -> None:
    body = {("invoiceValue" if k == "InvoiceValue" else k): v for k, v in EXECUTE.items()}
    status, answer, _ = await call(http, f"{fake.url}/v2/ExecutePayment", body)
    assert status == 400 and answer["ValidationErrors"][0]["Name"] == "InvoiceValue"


async def test_items_must_add_up_to_the_invoice_value(fake: FakeMyFatoorah, http: aiohttp.ClientSession) -> None:
    items = [{"ItemName": "pack", "Quantity": 1, "UnitPrice": Decimal("4.999")}]
    status, body, _ = await call(http, f"{fake.url}/v2/ExecutePayment", {**EXECUTE, "InvoiceItems": items})
    assert status == 400 and body["IsSuccess"] is False and "total items" in body["Message"]


async def test_localhost_urls_refused_when_asked_like_the_real_service(
    fake: FakeMyFatoorah, http: aiohttp.ClientSession
) -> None:
    fake.settings.refuse_localhost = True
    status, body, _ = await call(http, f"{fake.url}/v2/ExecutePayment", EXECUTE)
    assert status == 400 and body["ValidationErrors"][0]["Name"] == "CallBackUrl"


async def test_pay_redirects_with_payment_id_and_status_confirms(
    fake: FakeMyFatoorah, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    status, body, _ = await call(http, f"{fake.url}/v2/ExecutePayment", EXECUTE)
    assert status == 200 and body["Message"] == "Invoice Created Successfully!"
    data = body["Data"]
    assert data["CustomerReference"] == "ORD-7" and isinstance(data["InvoiceId"], int)
    location = await pay(http, data["PaymentURL"])
    assert location.startswith("http://127.0.0.1:9/cb?paymentId=")
    payment_id = location.split("paymentId=")[1].split("&")[0]
    for key, key_type in ((payment_id, "PaymentId"), (str(data["InvoiceId"]), "InvoiceId")):
        _, answer, raw = await call(http, f"{fake.url}/v2/GetPaymentStatus", {"Key": key, "KeyType": key_type})
        status_data = answer["Data"]
        assert status_data["InvoiceStatus"] == "Paid"
        assert '"InvoiceValue":5.000' in raw
        [t] = status_data["InvoiceTransactions"]
        assert t["TransactionStatus"] == "Succss"  # sic
        assert t["TransationValue"] == "5.000"  # sic
        assert t["PaymentId"] == payment_id and t["Currency"] == "KD"  # as MyFatoorah writes it
    # Paying again is not possible: the page says so instead of redirecting.
    async with http.get(data["PaymentURL"], allow_redirects=False) as r:
        assert r.status == 200 and "paid" in await r.text()


async def test_failed_attempt_then_success_puts_the_failure_first(
    fake: FakeMyFatoorah, http: aiohttp.ClientSession
) -> None:
    _, body, _ = await call(http, f"{fake.url}/v2/ExecutePayment", EXECUTE)
    url = body["Data"]["PaymentURL"]
    assert (await pay(http, url, "?result=fail")).startswith("http://127.0.0.1:9/err?paymentId=")
    await pay(http, url)
    key = {"Key": str(body["Data"]["InvoiceId"]), "KeyType": "InvoiceId"}
    _, answer, _ = await call(http, f"{fake.url}/v2/GetPaymentStatus", key)
    statuses = [t["TransactionStatus"] for t in answer["Data"]["InvoiceTransactions"]]
    assert statuses == ["Failed", "Succss"] and answer["Data"]["InvoiceStatus"] == "Paid"


async def test_knet_test_card_captures_only_with_its_expiry(fake: FakeMyFatoorah, http: aiohttp.ClientSession) -> None:
    _, body, _ = await call(http, f"{fake.url}/v2/ExecutePayment", EXECUTE)
    url = body["Data"]["PaymentURL"]
    assert "/err?" in await pay(http, url, "?card=8888880000000001&expiry=10/30")
    assert "/cb?" in await pay(http, url, "?card=8888880000000001&expiry=09/30")


async def test_decline_and_pending_knobs(fake: FakeMyFatoorah, http: aiohttp.ClientSession) -> None:
    fake.settings.decline = True
    _, body, _ = await call(http, f"{fake.url}/v2/ExecutePayment", EXECUTE)
    assert "/err?" in await pay(http, body["Data"]["PaymentURL"])
    fake.settings.decline, fake.settings.pending = False, True
    _, body, _ = await call(http, f"{fake.url}/v2/ExecutePayment", EXECUTE)
    location = await pay(http, body["Data"]["PaymentURL"])
    payment_id = location.split("paymentId=")[1].split("&")[0]
    key = {"Key": payment_id, "KeyType": "PaymentId"}
    _, answer, _ = await call(http, f"{fake.url}/v2/GetPaymentStatus", key)
    assert answer["Data"]["InvoiceStatus"] == "Pending"
    assert answer["Data"]["InvoiceTransactions"][0]["TransactionStatus"] == "InProgress"
    fake.complete(payment_id)
    _, answer, _ = await call(http, f"{fake.url}/v2/GetPaymentStatus", key)
    assert answer["Data"]["InvoiceStatus"] == "Paid"


async def test_amount_mismatch_knob(fake: FakeMyFatoorah, http: aiohttp.ClientSession) -> None:
    fake.settings.amount_offset_fils = -1
    _, body, _ = await call(http, f"{fake.url}/v2/ExecutePayment", EXECUTE)
    _, _, raw = await call(
        http, f"{fake.url}/v2/GetPaymentStatus", {"Key": str(body["Data"]["InvoiceId"]), "KeyType": "InvoiceId"}
    )
    assert '"InvoiceValue":4.999' in raw


async def test_unknown_key_and_key_type(fake: FakeMyFatoorah, http: aiohttp.ClientSession) -> None:
    status, body, _ = await call(http, f"{fake.url}/v2/GetPaymentStatus", {"Key": "123", "KeyType": "InvoiceId"})
    assert status == 400 and body["IsSuccess"] is False and body["Data"] is None
    status, body, _ = await call(http, f"{fake.url}/v2/GetPaymentStatus", {"Key": "123", "KeyType": "invoiceid"})
    assert status == 400 and body["ValidationErrors"][0]["Name"] == "KeyType"


async def test_status_rate_limit_answers_429(fake: FakeMyFatoorah, http: aiohttp.ClientSession) -> None:
    fake.settings.status_limit = 2
    key = {"Key": "1", "KeyType": "InvoiceId"}
    statuses = [(await call(http, f"{fake.url}/v2/GetPaymentStatus", key))[0] for _ in range(3)]
    assert statuses == [400, 400, 429]


async def test_outages_html_pages_and_refused_connections(fake: FakeMyFatoorah, http: aiohttp.ClientSession) -> None:
    fake.settings.fail_status, fake.settings.fail_times = 403, 1
    status, body, text = await call(http, f"{fake.url}/v2/InitiatePayment", {})
    assert status == 403 and body is None and text.startswith("<html>")
    fake.settings.fail_status, fake.settings.fail_times = 503, 1
    fake.failures = 0
    assert (await call(http, f"{fake.url}/v2/InitiatePayment", {}))[0] == 503
    await fake.go_down()
    with pytest.raises(aiohttp.ClientConnectionError):
        await call(http, f"{fake.url}/v2/InitiatePayment", {})
    await fake.come_up()
    body = {"InvoiceAmount": Decimal("1.000"), "CurrencyIso": "KWD"}
    assert (await call(http, f"{fake.url}/v2/InitiatePayment", body))[0] == 200


async def test_send_payment_link_and_refund(
    fake: FakeMyFatoorah, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    body = {k: v for k, v in EXECUTE.items() if k != "PaymentMethodId"}
    status, answer, _ = await call(http, f"{fake.url}/v2/SendPayment", body)
    assert status == 400 and answer["ValidationErrors"][0]["Name"] == "NotificationOption"
    status, answer, _ = await call(http, f"{fake.url}/v2/SendPayment", {**body, "NotificationOption": "LNK"})
    invoice_id = str(answer["Data"]["InvoiceId"])
    refund = {"KeyType": "InvoiceId", "Key": invoice_id, "Amount": Decimal("1.000"), "ServiceChargeOnCustomer": False}
    status, answer2, _ = await call(http, f"{fake.url}/v2/MakeRefund", refund)
    assert status == 400 and "not paid" in answer2["Message"]
    await pay(http, answer["Data"]["InvoiceURL"], "?method=vm")
    status, answer2, raw = await call(http, f"{fake.url}/v2/MakeRefund", refund)
    assert status == 200 and '"Amount":1.000' in raw
    too_much = {**refund, "Amount": Decimal("4.001")}
    assert (await call(http, f"{fake.url}/v2/MakeRefund", too_much))[0] == 400
    fake.settle_refund(answer2["Data"]["RefundId"])
    await fake.webhooks_sent()
    hook = webhooks.verify(body=receiver.received[-1][0], headers=receiver.received[-1][1], secret=SECRET)
    assert hook.code == 2 and hook.status == "REFUNDED" and hook.invoice_id == invoice_id


async def test_v2_webhook_is_signed_as_documented(
    fake: FakeMyFatoorah, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    _, body, _ = await call(http, f"{fake.url}/v2/ExecutePayment", EXECUTE)
    location = await pay(http, body["Data"]["PaymentURL"])
    await fake.webhooks_sent()
    [(raw, headers)] = receiver.received
    assert headers["MyFatoorah-Webhook-Version"] == "v2"
    payload = orjson.loads(raw)
    assert payload["Event"]["Code"] == 1 and payload["Event"]["Name"] == "PAYMENT_STATUS_CHANGED"
    data = payload["Data"]
    payment_id = location.split("paymentId=")[1].split("&")[0]
    text = (
        f"Invoice.Id={body['Data']['InvoiceId']},Invoice.Status=PAID,Transaction.Status=SUCCESS,"
        f"Transaction.PaymentId={payment_id},Invoice.ExternalIdentifier=ORD-7"
    )
    assert events.v2_signed_text(data, 1) == text
    assert headers["MyFatoorah-Signature"] == webhooks.sign(text, secret=SECRET)
    hook = webhooks.verify(body=raw, headers=headers, secret=SECRET)
    assert (hook.customer_reference, hook.payment_id, hook.status) == ("ORD-7", payment_id, "SUCCESS")


async def test_v1_webhook_signs_sorted_data(
    fake: FakeMyFatoorah, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    fake.settings.webhook_version = "v1"
    _, body, _ = await call(http, f"{fake.url}/v2/ExecutePayment", {**EXECUTE, "UserDefinedField": None})
    await pay(http, body["Data"]["PaymentURL"])
    await fake.webhooks_sent()
    [(raw, headers)] = receiver.received
    data = orjson.loads(raw)["Data"]
    assert "InvoiceValueInDisplayCurreny" in data  # sic
    text = ",".join(f"{k}={'' if data[k] is None else data[k]}" for k in sorted(data, key=str.lower))
    assert text.endswith(",UserDefinedField=")  # null signs as empty, sorted last
    assert headers["MyFatoorah-Signature"] == webhooks.sign(text, secret=SECRET)
    assert webhooks.verify(body=raw, headers=headers, secret=SECRET).status == "SUCCESS"


async def test_duplicates_retries_and_bad_signatures(
    fake: FakeMyFatoorah, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    fake.settings.webhook_copies = 3
    receiver.status = 500
    fake.settings.webhook_retries = 2
    _, body, _ = await call(http, f"{fake.url}/v2/ExecutePayment", EXECUTE)
    await pay(http, body["Data"]["PaymentURL"])
    await fake.webhooks_sent()
    assert len(receiver.received) == 3 * 3  # three copies, each tried three times
    assert len({r[0] for r in receiver.received}) == 1  # the same event every time
    receiver.received.clear()
    receiver.status = 200
    fake.settings.webhook_copies, fake.settings.webhook_bad_signature = 1, True
    _, body, _ = await call(http, f"{fake.url}/v2/ExecutePayment", EXECUTE)
    await pay(http, body["Data"]["PaymentURL"])
    await fake.webhooks_sent()
    [(raw, headers)] = receiver.received
    with pytest.raises(webhooks.WebhookRejected):
        webhooks.verify(body=raw, headers=headers, secret=SECRET)


async def test_slow_answers(fake: FakeMyFatoorah, http: aiohttp.ClientSession) -> None:
    fake.settings.latency = 0.5
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await call(http, f"{fake.url}/v2/InitiatePayment", {})


async def test_runs_standalone() -> None:
    from tests.support.servers import free_port

    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.fakes.myfatoorah", "--port", str(port), stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert line.startswith(f"ready http://127.0.0.1:{port}".encode())
        async with aiohttp.ClientSession() as http:
            status, _, _ = await call(http, f"http://127.0.0.1:{port}/v2/InitiatePayment", {}, auth=False)
            assert status == 401
    finally:
        proc.terminate()
        await proc.wait()
