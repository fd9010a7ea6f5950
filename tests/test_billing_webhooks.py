"""Webhook verification: genuine v1/v2 pass; forged, unsigned, reordered, case-variant ones do not."""

from __future__ import annotations

import orjson
import pytest

from plugins.billing.webhooks import Webhook, WebhookRejected, php_text, sign, verify

SECRET = "wh-secret"
DATA_V2 = {
    "Invoice": {"Id": "6389662", "Status": "PAID", "ExternalIdentifier": "ORDER-12345", "UserDefinedField": None},
    "Transaction": {"Id": "1", "Status": "SUCCESS", "PaymentId": "07076389662000001"},
    "Customer": {"Reference": "ORDER-12345"},
    "Amount": {"ValueInBaseCurrency": "5.000"},
}
TEXT_V2 = (
    "Invoice.Id=6389662,Invoice.Status=PAID,Transaction.Status=SUCCESS,"
    "Transaction.PaymentId=07076389662000001,Invoice.ExternalIdentifier=ORDER-12345"
)


def v2(data: object = DATA_V2, reference: str = "WH-1", code: int = 1) -> bytes:
    return orjson.dumps(
        {"Event": {"Code": code, "Name": "PAYMENT_STATUS_CHANGED", "Reference": reference}, "Data": data}
    )


def headers(text: str, version: str = "v2", secret: str = SECRET) -> dict[str, str]:
    return {"MyFatoorah-Webhook-Version": version, "MyFatoorah-Signature": sign(text, secret=secret)}


def test_genuine_v2_verifies_and_reads_only_signed_fields() -> None:
    hook = verify(body=v2(), headers=headers(TEXT_V2), secret=SECRET)
    assert hook.signed == TEXT_V2
    assert (hook.invoice_id, hook.payment_id, hook.status, hook.customer_reference) == (
        "6389662",
        "07076389662000001",
        "SUCCESS",
        "ORDER-12345",
    )
    assert hook.reference == "WH-1"


def test_older_v2_signature_over_customer_reference_reads_that_field() -> None:
    data = {**DATA_V2, "Invoice": {**DATA_V2["Invoice"], "ExternalIdentifier": "EVIL"}}
    text = TEXT_V2.replace("Invoice.ExternalIdentifier=ORDER-12345", "Customer.Reference=ORDER-12345")
    hook = verify(body=v2(data), headers=headers(text), secret=SECRET)
    assert hook.customer_reference == "ORDER-12345"  # the signed one, not the unsigned "EVIL"


@pytest.mark.parametrize(
    "tamper",
    [
        lambda d: {**d, "Invoice": {**d["Invoice"], "Id": "6389663"}},
        lambda d: {**d, "Invoice": {**d["Invoice"], "Status": "PENDING"}},
        lambda d: {**d, "Transaction": {**d["Transaction"], "Status": "FAILED"}},
        lambda d: {**d, "Invoice": {**d["Invoice"], "ExternalIdentifier": "ORDER-99999"}},
        # case variants: the right key missing, a look-alike present
        lambda d: {**{k: v for k, v in d.items() if k != "Invoice"}, "invoice": d["Invoice"]},
        lambda d: {**d, "Transaction": {"status": "SUCCESS", "PaymentId": "07076389662000001"}},
    ],
)
def test_forged_or_case_variant_v2_is_rejected(tamper: object) -> None:
    assert callable(tamper)
    with pytest.raises(WebhookRejected, match="signature"):
        verify(body=v2(tamper(DATA_V2)), headers=headers(TEXT_V2), secret=SECRET)


def test_reordered_or_sorted_signed_string_is_rejected() -> None:
    parts = TEXT_V2.split(",")
    for text in (",".join(sorted(parts)), ",".join(reversed(parts)), TEXT_V2.lower()):
        with pytest.raises(WebhookRejected):
            verify(body=v2(), headers=headers(text), secret=SECRET)


def test_reordered_json_keys_still_verify() -> None:
    data = {k: DATA_V2[k] for k in reversed(list(DATA_V2))}
    assert verify(body=v2(data), headers=headers(TEXT_V2), secret=SECRET).invoice_id == "6389662"


@pytest.mark.parametrize(
    "hdrs",
    [
        {},
        {"MyFatoorah-Webhook-Version": "v2"},
        {"MyFatoorah-Signature": sign(TEXT_V2, secret=SECRET)},
        {"MyFatoorah-Webhook-Version": "v2", "MyFatoorah-Signature": ""},
        {"MyFatoorah-Webhook-Version": "V2", "MyFatoorah-Signature": sign(TEXT_V2, secret=SECRET)},
        {"MyFatoorah-Webhook-Version": "v3", "MyFatoorah-Signature": sign(TEXT_V2, secret=SECRET)},
        {"MyFatoorah-Webhook-Version": "v2", "MyFatoorah-Signature": sign(TEXT_V2, secret="other")},
        {"MyFatoorah-Webhook-Version": "v2", "MyFatoorah-Signature": "ٍsign\u00e9"},
    ],
)
def test_unsigned_or_badly_signed_is_rejected(hdrs: dict[str, str]) -> None:
    with pytest.raises(WebhookRejected):
        verify(body=v2(), headers=hdrs, secret=SECRET)


def test_header_names_are_case_insensitive_but_a_second_signature_is_refused() -> None:
    sig = sign(TEXT_V2, secret=SECRET)
    lower = [("myfatoorah-webhook-version", "v2"), ("myfatoorah-signature", sig)]
    assert verify(body=v2(), headers=lower, secret=SECRET).code == 1
    with pytest.raises(WebhookRejected, match="twice"):
        verify(body=v2(), headers=[*lower, ("MyFatoorah-Signature", "x")], secret=SECRET)


def test_no_secret_configured_rejects_everything() -> None:
    for secret in (None, ""):
        with pytest.raises(WebhookRejected):
            verify(body=v2(), headers=headers(TEXT_V2, secret=""), secret=secret)


@pytest.mark.parametrize(
    "body", [b"", b"[]", b"{", b'{"Data": []}', b'{"Event": {"Code": 4}, "Data": {}}', v2(code=True)]
)  # type: ignore[arg-type]
def test_malformed_bodies_are_rejected(body: bytes) -> None:
    with pytest.raises(WebhookRejected):
        verify(body=body, headers=headers(TEXT_V2), secret=SECRET)


def test_replayed_webhook_has_the_same_replay_key_whatever_its_reference() -> None:
    first = verify(body=v2(reference="WH-1"), headers=headers(TEXT_V2), secret=SECRET)
    replay = verify(body=v2(reference="WH-2"), headers=headers(TEXT_V2), secret=SECRET)
    # Event.Reference is not signed: a replay under a new one verifies, so de-duplication keys on what is.
    assert isinstance(replay, Webhook) and replay.reference != first.reference
    assert replay.replay_key == first.replay_key


def test_v1_signs_every_data_key_sorted_case_insensitively() -> None:
    data = {
        "TransactionStatus": "SUCCESS",
        "InvoiceId": 6389662,
        "amount": 5.0,
        "CustomerReference": "O-1",
        "Udf": None,
    }
    text = "amount=5,CustomerReference=O-1,InvoiceId=6389662,TransactionStatus=SUCCESS,Udf="
    body = orjson.dumps({"EventType": 1, "Event": "TransactionsStatusChanged", "Data": data})
    hook = verify(body=body, headers=headers(text, "v1"), secret=SECRET)
    assert (hook.invoice_id, hook.status, hook.customer_reference, hook.reference) == (
        "6389662",
        "SUCCESS",
        "O-1",
        None,
    )
    with pytest.raises(WebhookRejected):
        verify(body=body, headers=headers(text, "v1"), secret=SECRET, versions=("v2",))
    forged = orjson.dumps({"EventType": 1, "Data": {**data, "TransactionStatus": "FAILED"}})
    with pytest.raises(WebhookRejected):
        verify(body=forged, headers=headers(text, "v1"), secret=SECRET)


def test_v1_refund_leaves_gateway_reference_unsigned() -> None:
    data = {"RefundStatus": "REFUNDED", "InvoiceId": 1, "GatewayReference": "gw"}
    text = "InvoiceId=1,RefundStatus=REFUNDED"
    body = orjson.dumps({"EventType": 2, "Data": data})
    assert verify(body=body, headers=headers(text, "v1"), secret=SECRET).status == "REFUNDED"


def test_php_text() -> None:
    assert [php_text(v) for v in (None, True, False, 5.0, 5.5, 7, "x")] == ["", "1", "", "5", "5.5", "7", "x"]
    with pytest.raises(WebhookRejected):
        php_text({"a": 1})
