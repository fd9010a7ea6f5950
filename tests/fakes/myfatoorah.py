"""A fake MyFatoorah (v2 API) for tests and for trying a purchase on `make run`.

It speaks what `shared/reference/myfatoorah.md` describes, as strictly as the real service and never more
kindly: Bearer auth (a wrong or missing token is a bare 401, as the service's ASP.NET front answers),
the `{IsSuccess, Message, ValidationErrors, Data}` envelope with success read from `IsSuccess` (a refusal
is HTTP 400 with `IsSuccess: false`), field names with MyFatoorah's exact casing and spelling
(`TransactionStatus: "Succss"`, `TransationValue`), amounts as JSON numbers with three decimals (KWD)
but as grouped text in a transaction ("12,345.000", currency "KD", as MyFatoorah's examples show them),
invoice items that must add up to the invoice value, and a transaction list in which a failed attempt
comes before the successful one (so `InvoiceTransactions[0]` is the wrong one to read).

Routes: `POST /v2/InitiatePayment`, `/v2/ExecutePayment`, `/v2/SendPayment`, `/v2/GetPaymentStatus`,
`/v2/MakeRefund`, and `GET /pay/{token}`: the payment page, which pays (or fails) at once and redirects
with 302 to `CallBackUrl` (or `ErrorUrl`) with `?paymentId=…&Id=…`. Query knobs on the page: `result=fail`,
`method=kn|vm` (a SendPayment invoice lets the payer choose), `card=…&expiry=MM/YY` (the test cards: KNET
8888880000000001 captures only with 09/30, Visa/MC 5123450000000008 with 01/39).

After a payment changes, a webhook goes to `webhook_url` (v1 or v2, signed with `webhook_secret`; see
`myfatoorah_events.py`), retried like the real service when not answered 2xx. Knobs (`FakeSettings`, may
be changed while running): declined cards, payments left pending, duplicate webhooks, slow answers,
outages (5xx HTML, a 403 HTML block page, or `go_down()` for a refused connection), an invoice value off
by some fils, and a GetPaymentStatus rate limit answered 429.

Not confirmed against the live service (kept plausible, marked here so nobody mistakes them for facts):
the exact `Message` texts, the 429 body, the empty 401 body.

    python -m tests.fakes.myfatoorah --port 8090 --webhook-url http://127.0.0.1:8000/api/billing/webhooks/myfatoorah \
        --webhook-secret s3cret
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Literal
from urllib.parse import urlsplit

import aiohttp
import orjson
from aiohttp import web

from tests.fakes import myfatoorah_events as events
from tests.fakes import process

__all__ = ["Delivery", "FakeMyFatoorah", "FakeSettings", "main", "run_fake"]

JsonObject = dict[str, object]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

DEFAULT_TOKEN = "fake-myfatoorah-token"
METHODS = {
    1: ("kn", "KNET", "كي نت", "KNET"),
    2: ("vm", "VISA/MASTER", "فيزا / ماستر", "VISA/MASTER"),
}
TEST_CARDS = {"8888880000000001": ("kn", "09/30"), "5123450000000008": ("vm", "01/39")}
MAX_URL = 254
_BODY = web.RequestKey("myfatoorah_body", dict)
_BLOCKED_PAGE = b"<html><head><title>403 - Forbidden</title></head><body><h1>403 - Forbidden: Access is denied.</h1>"
_ERROR_PAGE = b"<html><head><title>Service Unavailable</title></head><body><h2>Service Unavailable</h2></body></html>"


@dataclass
class FakeSettings:
    """Knobs; read on every request, so a test may change them while the fake runs."""

    token: str = DEFAULT_TOKEN
    webhook_url: str | None = None
    webhook_secret: str | None = None
    webhook_version: Literal["v1", "v2"] = "v2"
    # Each webhook is delivered this many times at once (same body, same Event.Reference).
    webhook_copies: int = 1
    # Further attempts after a non-2xx answer or no answer (real: v2 up to 5, v1 up to 4, 10-180 s apart).
    webhook_retries: int = 5
    webhook_retry_seconds: float = 0.05
    webhook_delay: float = 0.0
    # Sign webhooks with a wrong key (a forged one, as the receiver sees it).
    webhook_bad_signature: bool = False
    latency: float = 0.0
    # Outage: API calls answer this status (403: the HTML block page; 5xx: an HTML error page).
    fail_status: int | None = None
    fail_times: int = 0
    decline: bool = False
    # Payments stay InProgress (invoice Pending) until `complete()`.
    pending: bool = False
    # Invoices are created for this many fils more than asked (an amount mismatch).
    amount_offset_fils: int = 0
    # GetPaymentStatus calls allowed per `status_window` seconds (0: unlimited); more answer 429.
    status_limit: int = 0
    status_window: float = 60.0
    # The real service refuses localhost CallBackUrl/ErrorUrl; tests usually need it allowed.
    refuse_localhost: bool = False


@dataclass
class Delivery:
    """One webhook delivery attempt; `status` None when the receiver could not be reached."""

    body: bytes
    headers: dict[str, str]
    status: int | None


class _Fail(Exception):
    def __init__(self, message: str, errors: Sequence[tuple[str, str]] = (), status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.errors = list(errors)
        self.status = status


@dataclass
class _Invoice:
    id: int
    token: str
    value_fils: int
    reference: str
    customer_reference: str | None
    user_defined: str | None
    name: str | None
    email: str | None
    mobile: str | None
    callback_url: str | None
    error_url: str | None
    method: str | None
    items: list[JsonObject]
    created: datetime
    status: str = "Pending"
    transactions: list[JsonObject] = field(default_factory=list)
    refunded_fils: int = 0


def _kwd(fils: int) -> str:
    return f"{fils // 1000}.{fils % 1000:03d}"


def _shown(fils: int) -> str:
    """A KWD amount as GetPaymentStatus writes it in text fields: grouped thousands ("12,345.000")."""
    return f"{fils // 1000:,}.{fils % 1000:03d}"


def _number(fils: int) -> orjson.Fragment:
    return orjson.Fragment(_kwd(fils).encode())


def _date(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-4]


def _envelope(data: object, message: str = "") -> web.Response:
    body = {"IsSuccess": True, "Message": message, "ValidationErrors": None, "Data": data}
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def _fils(body: JsonObject, key: str, *, required: bool = True) -> int | None:
    """A KWD amount from the request as fils: a JSON number, above zero, with at most three decimals."""
    value = body.get(key)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, Decimal)):
        raise _Fail("", [(key, f"The {key} field is required and must be a number.")])
    scaled = Decimal(value) * 1000
    if value <= 0 or scaled != scaled.to_integral_value():
        raise _Fail("", [(key, f"The {key} must be greater than zero with at most 3 decimal places for KWD.")])
    return int(scaled)


def _text(body: JsonObject, key: str, *, required: bool = False, limit: int = 200) -> str | None:
    value = body.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value.strip()) or len(value) > limit:
        raise _Fail("", [(key, f"The {key} field is required." if required else f"The {key} field is invalid.")])
    return value


class FakeMyFatoorah:
    """The fake server; tests read `invoices`, `calls` and `deliveries`."""

    def __init__(self, settings: FakeSettings | None = None) -> None:
        self.settings = settings if settings is not None else FakeSettings()
        self.url = ""
        self.invoices: dict[int, _Invoice] = {}
        self.calls: list[tuple[str, JsonObject]] = []
        self.deliveries: list[Delivery] = []
        self.refunds: dict[int, JsonObject] = {}
        self.failures = 0
        self._by_token: dict[str, int] = {}
        self._by_payment: dict[str, int] = {}
        self._ids = itertools.count(6389662)
        self._numbers = itertools.count(1)
        self._status_calls: deque[float] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._http: aiohttp.ClientSession | None = None
        self._host = "127.0.0.1"
        self._port = 0
        self.app = web.Application(middlewares=[self._middleware])
        self.app.router.add_post("/v2/InitiatePayment", self._initiate)
        self.app.router.add_post("/v2/ExecutePayment", self._execute)
        self.app.router.add_post("/v2/SendPayment", self._send_payment)
        self.app.router.add_post("/v2/GetPaymentStatus", self._status)
        self.app.router.add_post("/v2/MakeRefund", self._refund)
        self.app.router.add_get("/pay/{token}", self._page)

    # ------------------------------------------------------------------ lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        self._http = aiohttp.ClientSession()
        self._host, self._port = host, port
        await self.come_up()
        return self.url

    async def come_up(self) -> None:
        """Listen again (on the same port) after `go_down`."""
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, self._host, self._port, reuse_address=True)
        await self._site.start()
        self._port = self._runner.addresses[0][1]
        self.url = f"http://{self._host}:{self._port}"

    async def go_down(self) -> None:
        """Stop listening and drop open connections: connections are refused until `come_up`."""
        if self._site is not None:
            site, self._site = self._site, None
            await site.stop()
        server = self._runner.server if self._runner is not None else None
        for connection in list(server.connections if server is not None else []):
            if connection.transport is not None:
                connection.transport.close()

    async def stop(self) -> None:
        await self.webhooks_sent()
        if self._http is not None:
            await self._http.close()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def webhooks_sent(self) -> None:
        """Wait until every scheduled webhook was delivered or gave up."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # ------------------------------------------------------------------ the API

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/pay/"):
            return await handler(request)
        s = self.settings
        if s.latency > 0:
            await asyncio.sleep(s.latency)
        if request.headers.get("Authorization") != f"Bearer {s.token}":
            return web.Response(status=401, headers={"WWW-Authenticate": "Bearer"})
        if s.fail_status is not None and (s.fail_times <= 0 or self.failures < s.fail_times):
            self.failures += 1
            page = _BLOCKED_PAGE if s.fail_status == 403 else _ERROR_PAGE
            return web.Response(body=page, status=s.fail_status, content_type="text/html")
        try:
            body = json.loads(await request.text(), parse_float=Decimal)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return self._refusal(_Fail("", [("request", "A non-empty request body is required.")]))
        self.calls.append((request.path, body))
        request[_BODY] = body
        try:
            return await handler(request)
        except _Fail as exc:
            return self._refusal(exc)

    @staticmethod
    def _refusal(exc: _Fail) -> web.Response:
        errors = [{"Name": n, "Error": e} for n, e in exc.errors] or None
        message = exc.message or "Invalid data"
        out = {"IsSuccess": False, "Message": message, "ValidationErrors": errors, "Data": None}
        return web.Response(body=orjson.dumps(out), status=exc.status, content_type="application/json")

    async def _initiate(self, request: web.Request) -> web.StreamResponse:
        body: JsonObject = request[_BODY]
        amount = _fils(body, "InvoiceAmount")
        assert amount is not None
        if body.get("CurrencyIso") != "KWD":
            raise _Fail("", [("CurrencyIso", "The test account only supports KWD.")])
        methods = [
            {
                "PaymentMethodId": mid,
                "PaymentMethodAr": ar,
                "PaymentMethodEn": en,
                "PaymentMethodCode": code,
                "IsDirectPayment": False,
                "ServiceCharge": _number(0),
                "TotalAmount": _number(amount),
                "CurrencyIso": "KWD",
                "ImageUrl": f"{self.url}/static/{code}.png",
                "IsEmbeddedSupported": code == "vm",
                "PaymentCurrencyIso": "KWD",
            }
            for mid, (code, en, ar, _) in METHODS.items()
        ]
        return _envelope({"PaymentMethods": methods}, "Initiated Successfully!")

    def _new_invoice(self, body: JsonObject, *, method: str | None, link: bool) -> _Invoice:
        value = _fils(body, "InvoiceValue")
        assert value is not None
        urls = {k: _text(body, k, required=not link, limit=10_000) for k in ("CallBackUrl", "ErrorUrl")}
        for key, url in urls.items():
            parts = urlsplit(url) if url else None
            if parts is None:
                continue
            if parts.scheme not in ("http", "https") or not parts.hostname or len(url or "") > MAX_URL:
                raise _Fail("", [(key, f"The {key} must be a valid URL of at most {MAX_URL} characters.")])
            if self.settings.refuse_localhost and parts.hostname in ("localhost", "127.0.0.1", "::1"):
                raise _Fail("", [(key, "Localhost URLs are not allowed.")])
        language = body.get("Language")
        if language is not None and language not in ("ar", "en"):
            raise _Fail("", [("Language", "The Language must be 'ar' or 'en'.")])
        currency = body.get("DisplayCurrencyIso")
        if currency is not None and currency != "KWD":
            raise _Fail("", [("DisplayCurrencyIso", "The test account only supports KWD.")])
        mobile = _text(body, "CustomerMobile", limit=11)
        if mobile is not None and not mobile.isdigit():
            raise _Fail("", [("CustomerMobile", "The CustomerMobile must be digits only, at most 11.")])
        items = body.get("InvoiceItems")
        stored: list[JsonObject] = []
        if items is not None:
            if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
                raise _Fail("", [("InvoiceItems", "The InvoiceItems field is invalid.")])
            total = 0
            for item in items:
                quantity = item.get("Quantity")
                price = _fils(item, "UnitPrice")
                if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity < 1 or price is None:
                    raise _Fail("", [("Quantity", "The Quantity must be a whole number above zero.")])
                name = _text(item, "ItemName", required=True)
                total += quantity * price
                stored.append({"ItemName": name, "Quantity": quantity, "UnitPrice": _number(price)})
            if total != value:
                raise _Fail("Invoice value should equal total items value!")
        number = next(self._numbers)
        invoice = _Invoice(
            id=next(self._ids),
            token=f"{number:06d}{int(time.time() * 1000) % 10**8:08d}",
            value_fils=value + self.settings.amount_offset_fils,
            reference=f"{datetime.now(UTC).year}{number:06d}",
            customer_reference=_text(body, "CustomerReference", limit=50),
            user_defined=_text(body, "UserDefinedField", limit=200),
            name=_text(body, "CustomerName", required=link, limit=100),
            email=_text(body, "CustomerEmail", limit=100),
            mobile=mobile,
            callback_url=urls["CallBackUrl"],
            error_url=urls["ErrorUrl"],
            method=method,
            items=stored if items is not None else [],
            created=datetime.now(UTC),
        )
        self.invoices[invoice.id] = invoice
        self._by_token[invoice.token] = invoice.id
        return invoice

    async def _execute(self, request: web.Request) -> web.StreamResponse:
        body: JsonObject = request[_BODY]
        method_id = body.get("PaymentMethodId")
        if isinstance(method_id, bool) or method_id not in METHODS:
            raise _Fail("", [("PaymentMethodId", "The PaymentMethodId is invalid.")])
        assert isinstance(method_id, int)
        invoice = self._new_invoice(body, method=METHODS[method_id][0], link=False)
        data = {
            "InvoiceId": invoice.id,
            "IsDirectPayment": False,
            "PaymentURL": f"{self.url}/pay/{invoice.token}",
            "CustomerReference": invoice.customer_reference,
            "UserDefinedField": invoice.user_defined,
            "RecurringId": "",
        }
        return _envelope(data, "Invoice Created Successfully!")

    async def _send_payment(self, request: web.Request) -> web.StreamResponse:
        body: JsonObject = request[_BODY]
        if body.get("NotificationOption") not in ("LNK", "SMS", "EML", "ALL"):
            raise _Fail("", [("NotificationOption", "The NotificationOption must be LNK, SMS, EML or ALL.")])
        invoice = self._new_invoice(body, method=None, link=True)
        data = {
            "InvoiceId": invoice.id,
            "InvoiceURL": f"{self.url}/pay/{invoice.token}",
            "CustomerReference": invoice.customer_reference,
            "UserDefinedField": invoice.user_defined,
        }
        return _envelope(data, "Invoice Created Successfully!")

    def _find(self, body: JsonObject, *, types: Sequence[str]) -> _Invoice:
        key, key_type = body.get("Key"), body.get("KeyType")
        if key_type not in types:
            raise _Fail("", [("KeyType", f"The KeyType must be one of {', '.join(types)}.")])
        if not isinstance(key, str) or not key:
            raise _Fail("", [("Key", "The Key field is required.")])
        found = self._by_payment.get(key) if key_type == "PaymentId" else (int(key) if key.isdigit() else None)
        invoice = self.invoices.get(found) if found is not None else None
        if invoice is None:
            raise _Fail("No data match!")
        return invoice

    async def _status(self, request: web.Request) -> web.StreamResponse:
        s = self.settings
        if s.status_limit > 0:
            now = time.monotonic()
            while self._status_calls and self._status_calls[0] <= now - s.status_window:
                self._status_calls.popleft()
            if len(self._status_calls) >= s.status_limit:
                raise _Fail("Too many requests, please try again later.", status=429)
            self._status_calls.append(now)
        invoice = self._find(request[_BODY], types=("InvoiceId", "PaymentId"))
        return _envelope(self.record(invoice), "")

    async def _refund(self, request: web.Request) -> web.StreamResponse:
        body: JsonObject = request[_BODY]
        invoice = self._find(body, types=("InvoiceId", "PaymentId"))
        amount = _fils(body, "Amount")
        assert amount is not None
        if not isinstance(body.get("ServiceChargeOnCustomer"), bool):
            raise _Fail("", [("ServiceChargeOnCustomer", "The ServiceChargeOnCustomer field is required.")])
        if invoice.status != "Paid":
            raise _Fail("Invoice is not paid, it cannot be refunded!")
        if amount > invoice.value_fils - invoice.refunded_fils:
            raise _Fail("Refund amount exceeds the remaining invoice value!")
        invoice.refunded_fils += amount
        refund_id = next(self._ids)
        refund: JsonObject = {
            "RefundId": refund_id,
            "RefundReference": f"{datetime.now(UTC).year}{next(self._numbers):06d}",
            "Amount": _kwd(amount),
            "Comment": _text(body, "Comment", limit=500),
            "Status": "PENDING",
            "CreatedDate": _date(datetime.now(UTC)),
            "InvoiceId": invoice.id,
        }
        self.refunds[refund_id] = refund
        data = {
            "Key": body["Key"],
            "RefundId": refund_id,
            "RefundReference": refund["RefundReference"],
            "RefundInvoiceId": invoice.id,
            "Amount": _number(amount),
            "Comment": refund["Comment"],
        }
        return _envelope(data, "Refund has been created successfully!")

    def record(self, invoice: _Invoice) -> JsonObject:
        """GetPaymentStatus's `Data` for an invoice."""
        return {
            "InvoiceId": invoice.id,
            "InvoiceStatus": invoice.status,
            "InvoiceReference": invoice.reference,
            "CustomerReference": invoice.customer_reference,
            "CreatedDate": _date(invoice.created),
            "ExpiryDate": (invoice.created + timedelta(days=3)).strftime("%B %d, %Y"),
            "InvoiceValue": _number(invoice.value_fils),
            "Comments": None,
            "CustomerName": invoice.name,
            "CustomerMobile": invoice.mobile,
            "CustomerEmail": invoice.email,
            "UserDefinedField": invoice.user_defined,
            "InvoiceDisplayValue": f"{_shown(invoice.value_fils)} KD",
            "InvoiceItems": invoice.items,
            "InvoiceTransactions": invoice.transactions,
            "Suppliers": [],
        }

    # ------------------------------------------------------------------ paying

    async def _page(self, request: web.Request) -> web.StreamResponse:
        invoice_id = self._by_token.get(request.match_info["token"])
        invoice = self.invoices.get(invoice_id) if invoice_id is not None else None
        if invoice is None:
            return web.Response(status=404, text="<h1>Invoice not found</h1>", content_type="text/html")
        if invoice.status != "Pending":
            return web.Response(text=f"<h1>This invoice is {invoice.status.lower()}</h1>", content_type="text/html")
        q = request.query
        method = invoice.method or q.get("method", "kn")
        success = q.get("result", "pay") != "fail" and not self.settings.decline
        if "card" in q:
            expected = TEST_CARDS.get(q["card"])
            success = success and expected == (method, q.get("expiry"))
        payment_id = self.pay(invoice, method=method, success=success)
        target = invoice.callback_url if success or self.settings.pending else invoice.error_url
        if not target:
            return web.Response(text="<h1>Payment processed</h1>", content_type="text/html")
        glue = "&" if "?" in target else "?"
        raise web.HTTPFound(f"{target}{glue}paymentId={payment_id}&Id={payment_id}")

    def pay(self, invoice: _Invoice, *, method: str = "kn", success: bool = True) -> str:
        """One payment attempt on `invoice` (what the page does); returns its PaymentId."""
        n = len(self._by_payment) + 1
        payment_id = f"0707{invoice.id:010d}{n:06d}"
        pending = self.settings.pending and success
        status = "InProgress" if pending else ("Succss" if success else "Failed")
        moment = datetime.now(UTC)
        transaction: JsonObject = {
            "TransactionDate": _date(moment),
            "PaymentGateway": "KNET" if method == "kn" else "VISA/MASTER",
            "ReferenceId": f"{n:012d}",
            "TrackId": f"{moment:%d-%m-%Y}_{n}",
            "TransactionId": f"{n:06d}",
            "PaymentId": payment_id,
            "AuthorizationId": f"{n:06d}" if success else "",
            "TransactionStatus": status,
            "TransationValue": _shown(invoice.value_fils),  # sic
            "CustomerServiceCharge": "0.000",
            "TotalServiceCharge": "0.000",
            "DueValue": _shown(invoice.value_fils),
            # MyFatoorah names the dinar "KD" here, not "KWD" (its documented GetPaymentStatus examples).
            "PaidCurrency": "KD",
            "PaidCurrencyValue": _shown(invoice.value_fils),
            "VatAmount": "0.000",
            "IpAddress": "127.0.0.1",
            "Country": "Kuwait",
            "Currency": "KD",
            "Error": "" if success else "CANCELLED",
            "CardNumber": "",
            "ErrorCode": "" if success else "MF002",
        }
        invoice.transactions.append(transaction)
        self._by_payment[payment_id] = invoice.id
        if not pending:
            self._settle(invoice, transaction, success=success)
        return payment_id

    def complete(self, payment_id: str, *, success: bool = True) -> None:
        """Finish a payment left InProgress by the `pending` knob, and send its webhook."""
        invoice = self.invoices[self._by_payment[payment_id]]
        transaction = next(t for t in invoice.transactions if t["PaymentId"] == payment_id)
        transaction["TransactionStatus"] = "Succss" if success else "Failed"
        self._settle(invoice, transaction, success=success)

    def _settle(self, invoice: _Invoice, transaction: JsonObject, *, success: bool) -> None:
        if success:
            invoice.status = "Paid"
        self.notify_payment(invoice, transaction, success=success)

    def notify_payment(self, invoice: _Invoice, transaction: JsonObject, *, success: bool) -> None:
        """Send the payment webhook for `transaction` (tests call it again for late or out-of-order events)."""
        s = self.settings
        if s.webhook_version == "v1":
            data = events.payment_v1(
                invoice=self.record(invoice), transaction=transaction, status="SUCCESS" if success else "FAILED"
            )
            self._send(events.v1_body(1, data), events.v1_signed_text(data, 1))
        else:
            data = events.payment_v2(
                invoice=self.record(invoice),
                transaction=transaction,
                invoice_status="PAID" if success else "PENDING",
                transaction_status="SUCCESS" if success else "FAILED",
            )
            self._send(events.v2_body(1, f"WH-{next(self._numbers):08d}", data), events.v2_signed_text(data, 1))

    def settle_refund(self, refund_id: int, *, status: str = "REFUNDED") -> None:
        """MyFatoorah's finance team decided a refund: its status changes and webhook code 2 goes out."""
        refund = self.refunds[refund_id]
        refund["Status"] = status
        invoice = self.record(self.invoices[int(str(refund["InvoiceId"]))])
        if self.settings.webhook_version == "v1":
            data = events.refund_v1(refund=refund, invoice=invoice)
            self._send(events.v1_body(2, data), events.v1_signed_text(data, 2))
        else:
            data = events.refund_v2(refund=refund, invoice=invoice)
            self._send(events.v2_body(2, f"WH-{next(self._numbers):08d}", data), events.v2_signed_text(data, 2))

    # ------------------------------------------------------------------ webhooks

    def _send(self, payload: JsonObject, text: str) -> None:
        s = self.settings
        if not s.webhook_url:
            return
        headers = {"Content-Type": "application/json", "MyFatoorah-Webhook-Version": s.webhook_version}
        if s.webhook_secret:
            key = "not-the-secret" if s.webhook_bad_signature else s.webhook_secret
            headers["MyFatoorah-Signature"] = events.signature(text, key)
        body = orjson.dumps(payload)
        for _ in range(max(1, s.webhook_copies)):
            task = asyncio.get_running_loop().create_task(self._deliver(s.webhook_url, body, headers))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _deliver(self, url: str, body: bytes, headers: dict[str, str]) -> None:
        assert self._http is not None
        if self.settings.webhook_delay > 0:
            await asyncio.sleep(self.settings.webhook_delay)
        for attempt in range(1 + max(0, self.settings.webhook_retries)):
            if attempt:
                await asyncio.sleep(self.settings.webhook_retry_seconds)
            status: int | None = None
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                async with self._http.post(url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(30)) as r:
                    status = r.status
            self.deliveries.append(Delivery(body, dict(headers), status))
            if status is not None and 200 <= status < 300:
                return


# --------------------------------------------------------------------------- entry points


def run_fake(
    settings: FakeSettings | None = None, port: int = 0
) -> contextlib.AbstractAsyncContextManager[FakeMyFatoorah]:
    """Serve a FakeMyFatoorah on 127.0.0.1 (port 0: a free port) for the duration of the block."""
    return process.running(FakeMyFatoorah(settings), port)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.fakes.myfatoorah", description="Fake MyFatoorah (v2).")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8090)
    p.add_argument("--token", default=DEFAULT_TOKEN, help="the Bearer token it accepts")
    p.add_argument("--webhook-url", default=None)
    p.add_argument("--webhook-secret", default=None)
    p.add_argument("--webhook-version", choices=("v1", "v2"), default="v2")
    p.add_argument("--webhook-copies", type=int, default=1)
    p.add_argument("--latency", type=float, default=0.0, help="seconds before each API answer")
    p.add_argument("--decline", action="store_true", help="every payment fails")
    p.add_argument("--pending", action="store_true", help="payments stay in progress")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse_args(argv)
    fake = FakeMyFatoorah(
        FakeSettings(
            token=args.token,
            webhook_url=args.webhook_url,
            webhook_secret=args.webhook_secret,
            webhook_version=args.webhook_version,
            webhook_copies=args.webhook_copies,
            latency=args.latency,
            decline=args.decline,
            pending=args.pending,
        )
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(process.serve(fake, args.host, args.port))


if __name__ == "__main__":
    main()
