"""The fake MyFatoorah's webhooks: bodies as MyFatoorah sends them (v1 and v2), signed as it signs them.

The signing is written here independently of `plugins/billing/webhooks.py`, from the same protocol
facts (`shared/reference/myfatoorah.md`), so a mistake in one shows up against the other:
- v1 signs every `Data` key sorted case-insensitively as `key=value`, joined by commas, null as "";
  refund events (EventType 2) leave `GatewayReference` out;
- v2 signs a fixed list of dotted paths per event code, in that order;
- the signature is base64 of the raw HMAC-SHA256 digest, keyed with the webhook secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime

JsonObject = dict[str, object]

V2_SIGNED = {
    1: "Invoice.Id Invoice.Status Transaction.Status Transaction.PaymentId Invoice.ExternalIdentifier",
    2: "Refund.Id Refund.Status Amount.ValueInBaseCurrency ReferencedInvoice.Id",
    3: "Deposit.Reference Deposit.ValueInBaseCurrency Deposit.NumberOfTransactions",
    5: "Recurring.Id Recurring.Status Recurring.InitialInvoiceId",
}
V2_NAMES = {1: "PAYMENT_STATUS_CHANGED", 2: "REFUND_STATUS_CHANGED", 3: "BALANCE_TRANSFERRED", 5: "RECURRING_UPDATES"}
V1_NAMES = {1: "TransactionsStatusChanged", 2: "RefundStatusChanged"}


def now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]


def _as_php(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else ""
    return str(value)


def signature(text: str, secret: str) -> str:
    return base64.b64encode(hmac.new(secret.encode(), text.encode(), hashlib.sha256).digest()).decode()


def v1_signed_text(data: JsonObject, event_type: int) -> str:
    keys = [k for k in data if not (event_type == 2 and k == "GatewayReference")]
    keys.sort(key=str.lower)
    return ",".join(k + "=" + _as_php(data[k]) for k in keys)


def v2_signed_text(data: JsonObject, code: int) -> str:
    parts = []
    for path in V2_SIGNED[code].split():
        node: object = data
        for name in path.split("."):
            node = node.get(name) if isinstance(node, dict) else None
        parts.append(path + "=" + _as_php(node))
    return ",".join(parts)


def v2_body(code: int, reference: str, data: JsonObject) -> JsonObject:
    event = {"Code": code, "Name": V2_NAMES[code], "CountryIsoCode": "KWT", "CreationDate": now_text()}
    event["Reference"] = reference
    return {"Event": event, "Data": data}


def v1_body(event_type: int, data: JsonObject) -> JsonObject:
    return {
        "EventType": event_type,
        "Event": V1_NAMES[event_type],
        "DateTime": now_text(),
        "CountryIsoCode": "KWT",
        "Data": data,
    }


def payment_v2(
    *, invoice: JsonObject, transaction: JsonObject, invoice_status: str, transaction_status: str
) -> JsonObject:
    """`Data` of a v2 PAYMENT_STATUS_CHANGED event from the fake's invoice and transaction records."""
    value = str(invoice["InvoiceValue"])
    return {
        "Invoice": {
            "Id": str(invoice["InvoiceId"]),
            "Status": invoice_status,
            "Reference": invoice["InvoiceReference"],
            "CreationDate": invoice["CreatedDate"],
            "ExpirationDate": invoice["ExpiryDate"],
            "ExternalIdentifier": invoice["CustomerReference"],
            "UserDefinedField": invoice["UserDefinedField"],
            "MetaData": None,
        },
        "Transaction": {
            "Id": str(transaction["TransactionId"]),
            "Status": transaction_status,
            "PaymentMethod": transaction["PaymentGateway"],
            "PaymentId": transaction["PaymentId"],
            "ReferenceId": transaction["ReferenceId"],
            "TrackId": transaction["TrackId"],
            "AuthorizationId": transaction["AuthorizationId"],
            "TransactionDate": transaction["TransactionDate"],
            "ECI": "",
            "IP": {"Address": "127.0.0.1", "Country": "Kuwait"},
            "Error": {"Code": transaction["ErrorCode"], "Message": transaction["Error"]},
            "Card": {"NameOnCard": "", "Number": "", "Token": "", "PanHash": "", "Brand": "", "Issuer": ""},
        },
        "Customer": {
            "Reference": invoice["CustomerReference"],
            "Name": invoice["CustomerName"],
            "Mobile": invoice["CustomerMobile"],
            "Email": invoice["CustomerEmail"],
        },
        "Amount": {
            "BaseCurrency": "KWD",
            "ValueInBaseCurrency": value,
            "ServiceCharge": "0.000",
            "ServiceChargeVAT": "0.000",
            "ReceivableAmount": value,
            "DisplayCurrency": "KWD",
            "ValueInDisplayCurrency": value,
            "PayCurrency": "KWD",
            "ValueInPayCurrency": value,
        },
    }


def payment_v1(*, invoice: JsonObject, transaction: JsonObject, status: str) -> JsonObject:
    """`Data` of a v1 TransactionsStatusChanged event (field names as MyFatoorah spells them)."""
    value = str(invoice["InvoiceValue"])
    return {
        "InvoiceId": invoice["InvoiceId"],
        "InvoiceReference": invoice["InvoiceReference"],
        "CreatedDate": invoice["CreatedDate"],
        "CustomerReference": invoice["CustomerReference"],
        "CustomerName": invoice["CustomerName"],
        "CustomerMobile": invoice["CustomerMobile"],
        "CustomerEmail": invoice["CustomerEmail"],
        "TransactionStatus": status,
        "PaymentMethod": transaction["PaymentGateway"],
        "UserDefinedField": invoice["UserDefinedField"],
        "ReferenceId": transaction["ReferenceId"],
        "TrackId": transaction["TrackId"],
        "PaymentId": transaction["PaymentId"],
        "AuthorizationId": transaction["AuthorizationId"],
        "InvoiceValueInBaseCurrency": value,
        "BaseCurrency": "KWD",
        "InvoiceValueInDisplayCurreny": value,  # sic
        "DisplayCurrency": "KWD",
        "InvoiceValueInPayCurrency": value,
        "PayCurrency": "KWD",
    }


def refund_v2(*, refund: JsonObject, invoice: JsonObject) -> JsonObject:
    return {
        "Refund": {
            "Id": str(refund["RefundId"]),
            "Status": refund["Status"],
            "Reference": refund["RefundReference"],
            "CreationDate": refund["CreatedDate"],
            "Comment": refund["Comment"],
        },
        "Amount": {"BaseCurrency": "KWD", "ValueInBaseCurrency": refund["Amount"]},
        "ReferencedInvoice": {"Id": str(invoice["InvoiceId"]), "Reference": invoice["InvoiceReference"]},
    }


def refund_v1(*, refund: JsonObject, invoice: JsonObject) -> JsonObject:
    return {
        "RefundReference": refund["RefundReference"],
        "RefundStatus": refund["Status"],
        "Amount": refund["Amount"],
        "InvoiceId": invoice["InvoiceId"],
        "RefundId": refund["RefundId"],
        "GatewayReference": "gw-" + str(refund["RefundId"]),
        "CreatedDate": refund["CreatedDate"],
        "Comment": refund["Comment"],
    }
