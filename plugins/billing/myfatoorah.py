"""MyFatoorah's v2 API as a `PaymentGateway`: InitiatePayment, ExecutePayment, SendPayment,
GetPaymentStatus and MakeRefund over the gateway's shared aiohttp session.

What holds:
- amounts are integer fils on our side; they become three-decimal JSON numbers only in the request
  bytes, and answers are parsed with `Decimal` so an amount that is not a whole number of fils is refused
  as a malformed answer, never rounded;
- success is the envelope's `IsSuccess`, not the HTTP status; a 401 is a token problem (`NotConfigured`),
  5xx, 429, timeouts, refused connections, HTML pages (a blocked IP gets one) and malformed JSON are
  `Unreachable`; a well-formed "no" is `Refused`, whose message is generic and whose `details` keep
  MyFatoorah's texts for the logs;
- only the idempotent calls are retried (GetPaymentStatus, InitiatePayment), and never after a 429
  (GetPaymentStatus is rate-limited per account: the caller backs off instead); retrying ExecutePayment,
  SendPayment or MakeRefund after a timeout could create a second invoice or a second refund;
- the token is sent in one header and never logged or put in an error.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any, TypeVar

import aiohttp
import orjson
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    retry_if_not_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from plugins.billing.gateway_client import (
    CheckoutRequest,
    Invoice,
    InvoiceStatus,
    KeyType,
    NotConfigured,
    PaymentMethod,
    PaymentStatus,
    RefundRequested,
    Refused,
    Throttled,
    Transaction,
    TransactionStatus,
    Unreachable,
)
from plugins.billing.money import AmountError, checked_fils, from_decimal, to_decimal_text

log = logging.getLogger(__name__)

T = TypeVar("T")
Json = dict[str, Any]

MAX_URL = 254
# An answer larger than this is not one of MyFatoorah's; reading it whole would only cost memory.
MAX_ANSWER_BYTES = 1024 * 1024

_INVOICE_STATUS: dict[str, InvoiceStatus] = {"Paid": "paid", "Pending": "pending", "Canceled": "canceled"}
# "Succss" is MyFatoorah's spelling; the correct one is accepted too, should they ever fix it.
_TRANSACTION_STATUS: dict[str, TransactionStatus] = {
    "Succss": "success",
    "Success": "success",
    "Failed": "failed",
    "InProgress": "in_progress",
}


# A transaction's amounts are text with grouped thousands ("12,345.000") and its currency is "KD", as
# MyFatoorah's GetPaymentStatus examples show them; read strictly, a real payment would be a malformed
# answer or a currency mismatch (disputed) instead of paid.
_GROUPED = re.compile(r"^[0-9]{1,3}(?:,[0-9]{3})+(?:\.[0-9]+)?$")
_CURRENCY = {"KD": "KWD"}


class _Malformed(Exception):
    """An answer that does not have the shape MyFatoorah documents."""


def _amount(fils: int) -> orjson.Fragment:
    """A JSON number with exactly three decimals, e.g. 5.000, written as text so no float is involved."""
    return orjson.Fragment(to_decimal_text(fils).encode())


def _fils(data: Json, key: str) -> int:
    value = data.get(key)
    if isinstance(value, str) and _GROUPED.match(value):
        value = value.replace(",", "")
    try:
        return from_decimal(value)
    except AmountError as exc:
        raise _Malformed(f"{key}: {exc}") from None


def _text(data: Json, key: str, *, required: bool = True) -> str | None:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        if value is None and not required:
            return None
        raise _Malformed(f"{key}: expected text or a number")
    return str(value)


def _required(data: Json, key: str) -> str:
    value = _text(data, key)
    assert value is not None
    return value


def _details(envelope: Json) -> tuple[str, ...]:
    """Every message MyFatoorah put in a refusal: Message, ValidationErrors, FieldsErrors, Data.ErrorMessage."""
    out: list[str] = []
    if isinstance(envelope.get("Message"), str) and envelope["Message"]:
        out.append(envelope["Message"])
    for key in ("ValidationErrors", "FieldsErrors"):
        items = envelope.get(key)
        for item in items if isinstance(items, list) else []:
            if isinstance(item, dict):
                out.append(f"{item.get('Name')}: {item.get('Error')}")
    data = envelope.get("Data")
    if isinstance(data, dict) and isinstance(data.get("ErrorMessage"), str):
        out.append(data["ErrorMessage"])
    return tuple(out)


def _checked_request(request: CheckoutRequest) -> None:
    if checked_fils(request.amount_fils) < 1:
        raise ValueError("an invoice must be for at least 1 fils")
    for url in (request.callback_url, request.error_url):
        if not url.startswith(("https://", "http://")) or len(url) > MAX_URL:
            raise ValueError(f"CallBackUrl and ErrorUrl must be http(s) URLs of at most {MAX_URL} characters")
    if not request.reference:
        raise ValueError("an invoice needs our order reference")


class MyFatoorahClient:
    """The v2 client. `token` None means payments are not configured: every call raises NotConfigured."""

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        base_url: str,
        token: str | None,
        timeout_seconds: float = 20.0,
        attempts: int = 3,
        wait_seconds: float = 0.5,
    ) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self._token = token or None
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._attempts = max(1, attempts)
        self._wait = wait_seconds

    def __repr__(self) -> str:
        return f"MyFatoorahClient(base_url={self._base!r}, configured={self._token is not None})"

    @property
    def configured(self) -> bool:
        return self._token is not None

    # ------------------------------------------------------------------ transport

    async def _post(self, path: str, body: Json) -> Json:
        """POST once; the `Data` object of a successful envelope, or one of the typed errors."""
        if self._token is None:
            raise NotConfigured("MyFatoorah is not configured (no token)")
        headers = {"Authorization": f"Bearer {self._token}", "Content-Type": "application/json"}
        headers["Accept"] = "application/json"
        try:
            async with self._session.post(
                f"{self._base}{path}", data=orjson.dumps(body), headers=headers, timeout=self._timeout
            ) as resp:
                status = resp.status
                raw = await self._read(resp)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("myfatoorah %s: unreachable (%s)", path, type(exc).__name__)
            raise Unreachable(f"MyFatoorah could not be reached ({path})") from None
        log.debug("myfatoorah %s: HTTP %d", path, status)
        if status == 401:
            raise NotConfigured("MyFatoorah rejected the token (401)")
        if status == 429:
            raise Throttled(f"MyFatoorah is throttling {path}")
        if status >= 500:
            raise Unreachable(f"MyFatoorah answered {status} ({path})")
        try:
            envelope = json.loads(raw, parse_float=Decimal)
        except (ValueError, UnicodeDecodeError):
            envelope = None
        if not isinstance(envelope, dict) or not isinstance(envelope.get("IsSuccess"), bool):
            raise Unreachable(f"MyFatoorah answered {status} without its JSON envelope ({path})")
        data = envelope.get("Data")
        if envelope["IsSuccess"] is not True or status >= 300 or not isinstance(data, dict):
            details = _details(envelope)
            log.warning("myfatoorah %s: refused (HTTP %d): %s", path, status, "; ".join(details)[:500])
            raise Refused("MyFatoorah refused the request", details=details)
        return data

    @staticmethod
    async def _read(resp: aiohttp.ClientResponse) -> bytes:
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(65536):
            size += len(chunk)
            if size > MAX_ANSWER_BYTES:
                raise aiohttp.ClientPayloadError("answer too large")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _call(self, path: str, body: Json, parse: Callable[[Json], T], *, retry: bool) -> T:
        async def once() -> T:
            data = await self._post(path, body)
            try:
                return parse(data)
            except (_Malformed, KeyError, TypeError, ValueError) as exc:
                log.warning("myfatoorah %s: malformed answer (%s)", path, exc)
                raise Unreachable(f"MyFatoorah's answer to {path} was malformed") from None

        if not retry:
            return await once()
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._attempts),
            wait=wait_exponential(multiplier=self._wait, max=30),
            # Throttled is an Unreachable, but asking again at once is what a rate limit forbids.
            retry=retry_if_exception_type(Unreachable) & retry_if_not_exception_type(Throttled),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await once()
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    # ------------------------------------------------------------------ the API

    async def payment_methods(self, *, amount_fils: int) -> tuple[PaymentMethod, ...]:
        body = {"InvoiceAmount": _amount(amount_fils), "CurrencyIso": "KWD"}
        return await self._call("/v2/InitiatePayment", body, _methods, retry=True)

    async def execute(self, *, request: CheckoutRequest, method_id: int) -> Invoice:
        _checked_request(request)
        body = {"PaymentMethodId": method_id, **_invoice_body(request)}
        return await self._call("/v2/ExecutePayment", body, _invoice("PaymentURL"), retry=False)

    async def payment_link(self, *, request: CheckoutRequest) -> Invoice:
        _checked_request(request)
        body = {"NotificationOption": "LNK", **_invoice_body(request)}
        return await self._call("/v2/SendPayment", body, _invoice("InvoiceURL"), retry=False)

    async def status(self, *, key: str, key_type: KeyType, retry: bool = True) -> PaymentStatus:
        if not key or len(key) > 64 or not key.isascii() or not key.isalnum():
            raise Refused("not a MyFatoorah payment or invoice id")
        return await self._call("/v2/GetPaymentStatus", {"Key": key, "KeyType": key_type}, _status, retry=retry)

    async def refund(self, *, invoice_id: str, amount_fils: int, comment: str) -> RefundRequested:
        if checked_fils(amount_fils) < 1:
            raise ValueError("a refund must be for at least 1 fils")
        body = {
            "KeyType": "InvoiceId",
            "Key": invoice_id,
            "Amount": _amount(amount_fils),
            "Comment": comment[:200],
            "ServiceChargeOnCustomer": False,
        }
        return await self._call("/v2/MakeRefund", body, _refund, retry=False)


# ---------------------------------------------------------------------- bodies and answers


def _invoice_body(request: CheckoutRequest) -> Json:
    body: Json = {
        "InvoiceValue": _amount(request.amount_fils),
        "CustomerName": request.customer_name[:100],
        "DisplayCurrencyIso": "KWD",
        "CallBackUrl": request.callback_url,
        "ErrorUrl": request.error_url,
        "Language": request.language,
        "CustomerReference": request.reference,
        "InvoiceItems": [{"ItemName": request.item, "Quantity": 1, "UnitPrice": _amount(request.amount_fils)}],
    }
    optional = {
        "CustomerEmail": request.customer_email,
        "MobileCountryCode": request.mobile_country_code,
        "CustomerMobile": request.customer_mobile,
        "UserDefinedField": request.user_defined,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    return body


def _methods(data: Json) -> tuple[PaymentMethod, ...]:
    items = data.get("PaymentMethods")
    if not isinstance(items, list):
        raise _Malformed("PaymentMethods: expected a list")
    return tuple(
        PaymentMethod(
            id=int(_required(m, "PaymentMethodId")),
            code=_required(m, "PaymentMethodCode"),
            name_en=_required(m, "PaymentMethodEn"),
            name_ar=_required(m, "PaymentMethodAr"),
            service_charge_fils=_fils(m, "ServiceCharge"),
            total_fils=_fils(m, "TotalAmount"),
            direct=m.get("IsDirectPayment") is True,
        )
        for m in items
    )


def _invoice(url_key: str) -> Callable[[Json], Invoice]:
    def parse(data: Json) -> Invoice:
        url = _required(data, url_key)
        if not url.startswith(("https://", "http://")):
            raise _Malformed(f"{url_key}: not an http(s) URL")
        return Invoice(_required(data, "InvoiceId"), url, _text(data, "CustomerReference", required=False))

    return parse


def _transaction(item: Json) -> Transaction:
    raw = item.get("TransactionStatus")
    value = item.get("TransationValue")  # sic: MyFatoorah's field name
    return Transaction(
        payment_id=_required(item, "PaymentId"),
        transaction_id=_text(item, "TransactionId", required=False) or "",
        status=_TRANSACTION_STATUS.get(raw, "other") if isinstance(raw, str) else "other",
        method=_text(item, "PaymentGateway", required=False) or "",
        amount_fils=None if value is None else _fils(item, "TransationValue"),
        currency=_currency(_text(item, "Currency", required=False)),
    )


def _currency(name: str | None) -> str | None:
    return _CURRENCY.get(name, name) if name is not None else None


def _status(data: Json) -> PaymentStatus:
    raw = data.get("InvoiceStatus")
    items = data.get("InvoiceTransactions")
    if items is None:
        items = []
    if not isinstance(items, list) or not all(isinstance(t, dict) for t in items):
        raise _Malformed("InvoiceTransactions: expected a list of objects")
    return PaymentStatus(
        invoice_id=_required(data, "InvoiceId"),
        status=_INVOICE_STATUS.get(raw, "other") if isinstance(raw, str) else "other",
        amount_fils=_fils(data, "InvoiceValue"),
        reference=_text(data, "CustomerReference", required=False),
        transactions=tuple(_transaction(t) for t in items),
    )


def _refund(data: Json) -> RefundRequested:
    return RefundRequested(
        refund_id=_required(data, "RefundId"),
        reference=_text(data, "RefundReference", required=False),
        amount_fils=_fils(data, "Amount"),
    )
