"""The `billing.pending` job: orders still pending are confirmed with MyFatoorah until they are paid,
failed or expired, so a payment whose callback and webhooks all went missing is credited all the same.
A failed order is asked about too until it expires: the payer may retry on the same invoice, and that
retry's return can fall within the callback's cooldown and its webhook be lost, so without the job a
paid retry would stay `failed` for good. Whatever the job finds goes through the one crediting path,
which never downgrades a paid order.

GetPaymentStatus is rate-limited per MyFatoorah account, so one run asks about at most
`max_status_calls_per_run` orders (the longest-waiting first), each order is asked again only after a
delay that doubles from `first_check_seconds` up to `max_check_interval_seconds`, and a run stops at the
first sign of throttling or an outage. An order past `order_expiry_seconds` that MyFatoorah still calls
unpaid becomes `expired`, and a failed one is no longer asked about; a payment confirmed later (a
webhook, the payer's return) still credits either (rules.py).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from edge.clock import utc_now
from plugins.billing import order_rows
from plugins.billing.gateway_client import PaymentError, Refused
from plugins.billing.order_rows import ASKED, Row
from plugins.billing.rules import next_check

if TYPE_CHECKING:
    from plugins.billing import Plugin

log = logging.getLogger("resayil.billing")


async def check_pending(plugin: Plugin) -> int:
    """One run of the job; returns how many orders MyFatoorah was asked about."""
    if not plugin.client.configured:
        return 0
    now = utc_now()
    db = plugin.gateway.database
    rows = await order_rows.due(db, now=now, limit=plugin.settings.max_status_calls_per_run)
    asked = 0
    for row in rows:
        asked += 1
        try:
            status = await plugin.confirmer.confirm(row, key=str(row.invoice_id), key_type="InvoiceId", source="job")
        except PaymentError as exc:
            await later(plugin, row)
            if isinstance(exc, Refused):
                continue  # about this order only (say, an invoice MyFatoorah does not know)
            log.warning("pending orders: MyFatoorah unavailable (%s); next run goes on", type(exc).__name__)
            break
        if status not in ASKED:
            continue
        if row.expires_at > now:
            await later(plugin, row)
        elif status == "pending":
            async with db.begin() as conn:
                await order_rows.move(
                    conn, reference=str(row.reference), to="expired", from_=("pending",), values={"next_check_at": None}
                )
        else:
            await order_rows.update(
                db, reference=str(row.reference), values={"next_check_at": None}, status=("failed",)
            )
    return asked


async def later(plugin: Plugin, row: Row) -> None:
    """Ask about `row` again after the backoff for one more attempt."""
    s = plugin.settings
    attempts = int(row.check_attempts) + 1
    when = next_check(
        attempts=attempts, now=utc_now(), first_seconds=s.first_check_seconds, max_seconds=s.max_check_interval_seconds
    )
    await order_rows.update(
        plugin.gateway.database,
        reference=str(row.reference),
        values={"next_check_at": when, "check_attempts": attempts},
        status=ASKED,
    )


async def check_soon(plugin: Plugin, reference: str) -> None:
    """Have the next run ask about this pending or failed order (its callback or webhook could not confirm it)."""
    await order_rows.update(
        plugin.gateway.database, reference=reference, values={"next_check_at": utc_now()}, status=ASKED
    )
