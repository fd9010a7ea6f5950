"""What a client sees of billing, as pure functions: orders, receipts and the refusals' words.

An order is shown by our reference (`id`), never by its row number, so ids cannot be walked. Amounts are
integer fils, with the text a person reads beside them in both languages; times are ISO 8601 UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from edge.errors import GatewayError, ServiceUnavailable
from plugins.billing.money import Locale, price_text
from plugins.billing.order_rows import Row


def iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.replace(tzinfo=UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def both(ar: str, en: str) -> dict[str, str]:
    return {"ar": ar, "en": en}


def amount(fils: int) -> dict[str, str]:
    return both(price_text(fils, locale="ar"), price_text(fils, locale="en"))


def order_json(order: Row, *, seller: dict[str, str]) -> dict[str, Any]:
    """An order as the portal shows it; a paid one carries what a bilingual printable receipt needs."""
    out: dict[str, Any] = {
        "id": order.reference,
        "status": order.status,
        "product": {"id": order.product_id, "kind": order.kind, "label": both(order.label_ar, order.label_en)},
        "credits": int(order.credits),
        "tier": order.tier,
        "amount_fils": int(order.price_fils),
        "currency": order.currency,
        "amount": amount(int(order.price_fils)),
        "invoice_id": order.invoice_id,
        "created_at": iso(order.created_at),
        "paid_at": iso(order.paid_at),
        "receipt_number": order.receipt_number,
        "plan_expires_at": iso(order.plan_expires_at),
    }
    if order.status == "pending" and order.payment_url:
        out["payment_url"] = order.payment_url
    if order.status == "paid":
        out["receipt"] = {
            "number": order.receipt_number,
            "seller": seller,
            "buyer": {"name": order.buyer_name, "email": order.buyer_email},
            "item": both(order.label_ar, order.label_en),
            "amount_fils": int(order.price_fils),
            "currency": order.currency,
            "amount": amount(int(order.price_fils)),
            "date": iso(order.paid_at),
            "method": order.method,
        }
    return out


_NOT_CONFIGURED = both(
    "الدفع الإلكتروني غير متاح حالياً. تواصل معنا لإتمام اشتراكك.",
    "Online payment is not available yet. Please contact us to complete your purchase.",
)
_UNAVAILABLE = both(
    "تعذّر الاتصال بخدمة الدفع. حاول مرة أخرى بعد قليل.",
    "The payment service could not be reached. Please try again in a moment.",
)


def not_configured(locale: Locale) -> GatewayError:
    """503 `payments_not_configured`: no MyFatoorah token (or MyFatoorah refused it)."""
    return ServiceUnavailable(_NOT_CONFIGURED[locale], code="payments_not_configured")


def provider_unavailable(locale: Locale) -> GatewayError:
    """503 `payment_provider_unavailable`: MyFatoorah did not answer usably; nothing was charged."""
    return ServiceUnavailable(_UNAVAILABLE[locale], code="payment_provider_unavailable", headers={"retry-after": "30"})


def locale_of(value: str | None) -> Locale:
    return "en" if value == "en" else "ar"
