"""What billing needs from a payment provider, whichever API version speaks to it.

`myfatoorah.py` implements this over MyFatoorah's v2 API; a v3 client can replace it without touching
the rest of billing. Amounts cross this interface as integer fils only; statuses are the provider's
words normalised to a few our code decides on, so a new provider cannot slip a status past a check that
does not know it (anything unrecognised is `other`, which credits nothing).

The errors are few on purpose, because a caller does one of three things: tell the operator the
configuration is missing or wrong (`NotConfigured`), try again later (`Unreachable`), or tell the user
the provider said no (`Refused`). None of their messages carries the token or the provider's own
validation texts; those are kept in `Refused.details` for logs and admins.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

InvoiceStatus = Literal["paid", "pending", "canceled", "other"]
TransactionStatus = Literal["success", "failed", "in_progress", "other"]
KeyType = Literal["PaymentId", "InvoiceId"]


class PaymentError(Exception):
    """Base of the provider errors; `str()` is safe to log and never holds the token."""


class NotConfigured(PaymentError):
    """No token, or the provider rejected it (401): only the operator can fix this."""


class Unreachable(PaymentError):
    """No usable answer: refused connection, timeout, 5xx, throttled, HTML or malformed JSON."""


class Throttled(Unreachable):
    """The provider asked us to slow down (GetPaymentStatus is rate-limited per account)."""


class Refused(PaymentError):
    """The provider answered and said no (IsSuccess false). `details` are its texts, for logs only."""

    def __init__(self, message: str, *, details: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.details = details


@dataclass(frozen=True, slots=True)
class PaymentMethod:
    id: int
    code: str
    name_en: str
    name_ar: str
    service_charge_fils: int
    total_fils: int
    direct: bool


@dataclass(frozen=True, slots=True)
class CheckoutRequest:
    """One order to pay. `reference` is our order reference; it comes back in every status and webhook."""

    amount_fils: int
    reference: str
    item: str
    customer_name: str
    callback_url: str
    error_url: str
    language: Literal["ar", "en"]
    customer_email: str | None = None
    mobile_country_code: str | None = None
    customer_mobile: str | None = None
    user_defined: str | None = None


@dataclass(frozen=True, slots=True)
class Invoice:
    """A created invoice and where to send the user to pay it."""

    invoice_id: str
    payment_url: str
    reference: str | None


@dataclass(frozen=True, slots=True)
class Transaction:
    payment_id: str
    transaction_id: str
    status: TransactionStatus
    method: str
    amount_fils: int | None
    currency: str | None


@dataclass(frozen=True, slots=True)
class PaymentStatus:
    """What the provider says about an invoice, confirmed by asking it (never taken from a redirect or a
    webhook body). `paid` is the successful transaction, wherever it stands in the list."""

    invoice_id: str
    status: InvoiceStatus
    amount_fils: int
    reference: str | None
    transactions: tuple[Transaction, ...]

    @property
    def paid(self) -> Transaction | None:
        return next((t for t in self.transactions if t.status == "success"), None)

    @property
    def currency(self) -> str | None:
        """The successful transaction's currency (the invoice itself does not say one)."""
        paid = self.paid
        return paid.currency if paid is not None else None


@dataclass(frozen=True, slots=True)
class RefundRequested:
    refund_id: str
    reference: str | None
    amount_fils: int


class PaymentGateway(Protocol):
    """A payment provider. Methods raise only the PaymentError subclasses above."""

    async def payment_methods(self, *, amount_fils: int) -> tuple[PaymentMethod, ...]: ...

    async def execute(self, *, request: CheckoutRequest, method_id: int) -> Invoice: ...

    async def payment_link(self, *, request: CheckoutRequest) -> Invoice: ...

    async def status(self, *, key: str, key_type: KeyType, retry: bool = True) -> PaymentStatus:
        """What the provider says about `key`; `retry` False asks once (a person is waiting on the answer)."""
        ...

    async def refund(self, *, invoice_id: str, amount_fils: int, comment: str) -> RefundRequested: ...
