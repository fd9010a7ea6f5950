"""MyFatoorah webhooks (v1 and v2): the signature check, as pure functions.

A webhook is a hint that something changed, never proof: what it says is confirmed with
GetPaymentStatus before anything is credited. Still, an unsigned or forged one must not even trigger
work, and the fields billing reads from it must be the fields the signature covers. So:

- both headers are required (`MyFatoorah-Webhook-Version`, `MyFatoorah-Signature`); a missing one,
  one sent twice with different values, an unknown version or event, or a body that is not the JSON
  object MyFatoorah sends is rejected, and so is everything when no secret is configured;
- the signed string is rebuilt exactly as MyFatoorah builds it: v1 signs every `Data` key sorted
  case-insensitively (ASCII, as PHP's strcasecmp), v2 signs a fixed list of dotted paths per event code,
  in that order, never sorted; values are rendered as PHP renders them (null and false as "", true as
  "1", 5.0 as "5"), because MyFatoorah's reference implementation is PHP;
- the comparison is constant-time (`hmac.compare_digest`), unlike the PHP library's `===`;
- keys are read with their exact case: `{"invoice": …}` is not `{"Invoice": …}`, so a case-variant key
  can neither change the signed string nor sneak an unsigned value into what billing reads;
- v2's `Event.Reference` is NOT covered by the signature, so a captured webhook replayed under a new
  reference still verifies. De-duplicating on it alone is not enough: `replay_key` is a digest of what
  is signed, equal for every replay of one signed event, and crediting is exactly-once on the invoice
  anyway.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson

Version = Literal["v1", "v2"]

VERSION_HEADER = "MyFatoorah-Webhook-Version"
SIGNATURE_HEADER = "MyFatoorah-Signature"

# v2: the signed paths per event code, in MyFatoorah's order. Code 1 was signed with `Customer.Reference`
# as its fifth field by older library versions, and with `Invoice.ExternalIdentifier` now.
V2_FIELDS: dict[int, tuple[tuple[str, ...], ...]] = {
    1: (
        ("Invoice.Id", "Invoice.Status", "Transaction.Status", "Transaction.PaymentId", "Invoice.ExternalIdentifier"),
        ("Invoice.Id", "Invoice.Status", "Transaction.Status", "Transaction.PaymentId", "Customer.Reference"),
    ),
    2: (("Refund.Id", "Refund.Status", "Amount.ValueInBaseCurrency", "ReferencedInvoice.Id"),),
    3: (("Deposit.Reference", "Deposit.ValueInBaseCurrency", "Deposit.NumberOfTransactions"),),
    5: (("Recurring.Id", "Recurring.Status", "Recurring.InitialInvoiceId"),),
}
# v1 refund events (EventType 2) drop this key before signing.
V1_UNSIGNED = {2: ("GatewayReference",)}


class WebhookRejected(Exception):
    """Not a genuine MyFatoorah webhook; the message says why (safe to log, never holds the secret)."""


@dataclass(frozen=True, slots=True)
class Webhook:
    """A verified webhook. Every field but `reference` and `data` comes from the signed string's values."""

    version: Version
    code: int
    # v2's Event.Reference (unsigned: see the module docstring); None for v1.
    reference: str | None
    invoice_id: str
    payment_id: str
    # The body's own status (SUCCESS, FAILED, REFUNDED, …): a hint to confirm, never a fact to credit.
    status: str
    customer_reference: str
    signed: str
    data: dict[str, Any]

    @property
    def replay_key(self) -> str:
        """The same for every copy or replay of one signed event, whatever its unsigned fields say."""
        return hashlib.sha256(f"{self.version}|{self.code}|{self.signed}".encode()).hexdigest()


def php_text(value: object) -> str:
    """A JSON value as PHP's string conversion writes it, which is what MyFatoorah signs."""
    if value is None or value is False:
        return ""
    if value is True:
        return "1"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    raise WebhookRejected("a signed field holds an object or a list")


def sign(text: str, *, secret: str) -> str:
    """Base64 of the raw HMAC-SHA256 digest of `text` keyed with `secret`."""
    digest = hmac.new(secret.encode(), text.encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def _at(data: Mapping[str, Any], path: str) -> object:
    node: object = data
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def v2_text(data: Mapping[str, Any], fields: Iterable[str]) -> str:
    return ",".join(f"{path}={php_text(_at(data, path))}" for path in fields)


def v1_text(data: Mapping[str, Any], *, event_type: int) -> str:
    drop = V1_UNSIGNED.get(event_type, ())
    keys = sorted((k for k in data if k not in drop), key=lambda k: k.encode().lower())
    return ",".join(f"{k}={php_text(data[k])}" for k in keys)


def _header(headers: Iterable[tuple[str, str]], name: str) -> str:
    values = {v for k, v in headers if k.lower() == name.lower()}
    if not values:
        raise WebhookRejected(f"the {name} header is missing")
    if len(values) > 1:
        raise WebhookRejected(f"the {name} header was sent twice")
    return values.pop()


def _matches(text: str, *, given: str, secret: str) -> bool:
    return hmac.compare_digest(sign(text, secret=secret).encode(), given.encode("utf-8", "replace"))


def _int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise WebhookRejected(f"{what} must be a number")
    return value


def verify(
    *,
    body: bytes,
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    secret: str | None,
    versions: Iterable[str] = ("v1", "v2"),
) -> Webhook:
    """The webhook, when `body` is signed with `secret` the way MyFatoorah signs; else WebhookRejected."""
    pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
    version = _header(pairs, VERSION_HEADER)
    given = _header(pairs, SIGNATURE_HEADER).strip()
    if not secret:
        raise WebhookRejected("no webhook secret is configured")
    if version not in set(versions) or version not in ("v1", "v2"):
        raise WebhookRejected("unsupported webhook version")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise WebhookRejected("the body is not JSON") from None
    data = payload.get("Data") if isinstance(payload, dict) else None
    if not isinstance(data, dict):
        raise WebhookRejected("the body has no Data object")
    if version == "v1":
        return _verify_v1(payload, data, given=given, secret=secret)
    return _verify_v2(payload, data, given=given, secret=secret)


def _verify_v1(payload: dict[str, Any], data: dict[str, Any], *, given: str, secret: str) -> Webhook:
    code = _int(payload.get("EventType"), "EventType")
    text = v1_text(data, event_type=code)
    if not _matches(text, given=given, secret=secret):
        raise WebhookRejected("the signature does not match")
    return Webhook(
        version="v1",
        code=code,
        reference=None,
        invoice_id=php_text(data.get("InvoiceId")),
        payment_id=php_text(data.get("PaymentId")),
        status=php_text(data.get("TransactionStatus", data.get("RefundStatus"))),
        customer_reference=php_text(data.get("CustomerReference")),
        signed=text,
        data=data,
    )


def _verify_v2(payload: dict[str, Any], data: dict[str, Any], *, given: str, secret: str) -> Webhook:
    event = payload.get("Event")
    if not isinstance(event, dict):
        raise WebhookRejected("the body has no Event object")
    code = _int(event.get("Code"), "Event.Code")
    variants = V2_FIELDS.get(code)
    if variants is None:
        raise WebhookRejected("unsupported webhook event")
    for fields in variants:
        text = v2_text(data, fields)
        if _matches(text, given=given, secret=secret):
            break
    else:
        raise WebhookRejected("the signature does not match")
    signed = dict(zip(fields, (php_text(_at(data, f)) for f in fields), strict=True))
    reference = event.get("Reference")
    return Webhook(
        version="v2",
        code=code,
        reference=reference if isinstance(reference, str) and reference else None,
        invoice_id=signed.get("Invoice.Id", signed.get("ReferencedInvoice.Id", "")),
        payment_id=signed.get("Transaction.PaymentId", ""),
        status=signed.get("Transaction.Status", signed.get("Refund.Status", "")),
        customer_reference=signed.get("Invoice.ExternalIdentifier", signed.get("Customer.Reference", "")),
        signed=text,
        data=data,
    )
