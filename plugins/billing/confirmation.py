"""Asking MyFatoorah what became of an order's payment, and acting on the answer.

Whatever triggers it (the user's return to the callback, a webhook, the pending-order job), the order
changes only on what GetPaymentStatus confirms, and only if the answer is about this order: the same
invoice id and our own reference. The body of a webhook or the query of a redirect never decides
anything. A confirmed payment goes to `crediting.credit_paid_order`, the one place that credits.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from plugins.billing import order_rows
from plugins.billing.crediting import Payment, PlanRules, credit_paid_order
from plugins.billing.gateway_client import KeyType, PaymentGateway
from plugins.billing.order_rows import Row
from plugins.billing.rules import Expected, confirmed_amount, verdict

if TYPE_CHECKING:
    from edge.gateway import Gateway

log = logging.getLogger("resayil.billing")

Source = Literal["callback", "webhook", "job", "admin"]


def expected(order: Row) -> Expected:
    return Expected(
        reference=str(order.reference),
        invoice_id=None if order.invoice_id is None else str(order.invoice_id),
        price_fils=int(order.price_fils),
        currency=str(order.currency),
    )


@dataclass
class Confirmer:
    """Confirms orders through `client` and credits them under `rules`."""

    gateway: Gateway
    client: PaymentGateway
    rules: PlanRules

    async def confirm(self, order: Row, *, key: str, key_type: KeyType, source: Source) -> str:
        """The order's status after asking MyFatoorah about `key`. Raises the client's PaymentError
        (Unreachable, Throttled, NotConfigured, Refused) when there is no usable answer: nothing changed."""
        # The payer's return is asked once: retries (up to three timeouts) would keep a person waiting
        # past a proxy's timeout, and the pending-order job asks again anyway.
        status = await self.client.status(key=key, key_type=key_type, retry=source != "callback")
        found = verdict(expected(order), status)
        fields = {"order": order.reference, "invoice": status.invoice_id, "verdict": found, "source": source}
        log.info("payment status confirmed", extra={"fields": fields})
        if found == "foreign":
            log.warning("a payment status about another order was ignored", extra={"fields": fields})
            return str(order.status)
        if found in ("paid", "mismatch"):
            paid = status.paid
            payment = Payment(
                amount_fils=confirmed_amount(status),
                currency=status.currency,
                payment_id=paid.payment_id if paid is not None else None,
                method=paid.method if paid is not None else None,
            )
            result = await credit_paid_order(
                self.gateway, reference=str(order.reference), payment=payment, rules=self.rules
            )
            if result.credited:
                log.info("order credited", extra={"fields": {**fields, "receipt": result.order.receipt_number}})
            return result.status
        if found == "failed":
            db = self.gateway.database
            async with db.begin() as conn:
                await order_rows.move(
                    conn,
                    reference=str(order.reference),
                    to="failed",
                    from_=("pending",),
                    values={"next_check_at": None},
                )
        now = await order_rows.read(self.gateway.database, reference=str(order.reference))
        return str(now.status) if now is not None else str(order.status)
