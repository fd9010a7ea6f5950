"""Reconciliation: every order of the last days held against what MyFatoorah says of its invoice.

The daily `billing.reconcile` job and `python -m edge billing reconcile` (by hand; exit 1 on any mismatch)
run the same check. It reports, and changes nothing: an order that is `paid_not_credited` (MyFatoorah says
Paid, the order is pending, failed or expired here) or `credited_not_paid` (paid here, while MyFatoorah
says otherwise, another amount, or does not know the invoice) or `paid_twice` (paid here, and its
invoice has more than one successful transaction: credited once, paid twice) is published as a durable
`billing.mismatch` event for the admins, all in one transaction after the checks. Crediting stays the
business of the one crediting path; an admin decides what a mismatch means.

GetPaymentStatus is rate-limited per MyFatoorah account, so one run asks at most `max_calls` times (the
oldest orders first) and stops at the first sign of throttling or an outage; the report says how many
orders it could not check. Disputed orders were reported when they were disputed; manual (bank transfer)
orders have no invoice to ask about.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from edge.cli import Command
from edge.clock import utc_now
from plugins.billing.confirmation import expected
from plugins.billing.gateway_client import PaymentError, Refused
from plugins.billing.lifecycle import BillingMismatch, mismatch
from plugins.billing.order_rows import Row
from plugins.billing.rules import CREDITABLE, confirmed_amount, paid_twice, verdict
from plugins.billing.tables import orders

if TYPE_CHECKING:
    from edge.gateway import Gateway
    from plugins.billing import Plugin

log = logging.getLogger("resayil.billing")


@dataclass
class Report:
    """One reconciliation: how many orders were checked, what disagreed, and what could not be checked."""

    orders: int = 0
    checked: int = 0
    mismatches: list[BillingMismatch] = field(default_factory=list)
    # Why the run stopped before checking every order (an outage, throttling, the call cap), or None.
    stopped: str | None = None

    @property
    def ok(self) -> bool:
        return not self.mismatches and self.checked == self.orders


async def reconcile(plugin: Plugin, *, days: int, max_calls: int, now: datetime | None = None) -> Report:
    """Check the orders created in the last `days` that have an invoice; publish what disagrees."""
    now = now or utc_now()
    query = (
        orders.select()
        .where(orders.c.created_at >= now - timedelta(days=days), orders.c.invoice_id.is_not(None))
        .where(orders.c.status != "disputed")
        .order_by(orders.c.id)
    )
    async with plugin.gateway.database.connect() as conn:
        rows = list((await conn.execute(query)).all())
    report = Report(orders=len(rows))
    for row in rows:
        if report.checked >= max_calls:
            report.stopped = f"the cap of {max_calls} status calls a run"
            break
        try:
            found = await _check(plugin, row)
        except PaymentError as exc:
            report.stopped = f"MyFatoorah could not be asked ({type(exc).__name__})"
            break
        report.checked += 1
        if found is not None:
            report.mismatches.append(found)
    if report.mismatches:
        async with plugin.gateway.database.begin() as conn:
            await plugin.gateway.events.publish(*report.mismatches, conn=conn)
    fields = {"orders": report.orders, "checked": report.checked, "mismatches": len(report.mismatches)}
    if report.ok:
        log.info("reconciliation: every order agrees", extra={"fields": fields})
    else:
        log.warning("reconciliation: %s", report.stopped or "mismatches found", extra={"fields": fields})
    return report


async def _check(plugin: Plugin, row: Row) -> BillingMismatch | None:
    """The mismatch `row` is in, or None. Raises PaymentError when MyFatoorah gave no usable answer."""
    try:
        status = await plugin.client.status(key=str(row.invoice_id), key_type="InvoiceId")
    except Refused:
        # MyFatoorah does not know the invoice: only a paid order is wrong then.
        return mismatch(row, "credited_not_paid", provider="unknown", fils=None) if row.status == "paid" else None
    found = verdict(expected(row), status)
    provider = "paid" if found in ("paid", "mismatch") else status.status
    fils = confirmed_amount(status)
    if row.status == "paid" and found != "paid":
        return mismatch(row, "credited_not_paid", provider=provider if found != "foreign" else "foreign", fils=fils)
    if row.status in CREDITABLE and found in ("paid", "mismatch"):
        return mismatch(row, "paid_not_credited", provider=provider, fils=fils)
    if row.status == "paid" and (total := paid_twice(status)) is not None:
        return mismatch(row, "paid_twice", provider=provider, fils=total)
    return None


# ---- `python -m edge billing reconcile` --------------------------------------------------------------------


def command(plugin: Plugin) -> Command:
    async def run(gateway: Gateway, args: argparse.Namespace) -> int:
        if args.billing_command != "reconcile":
            return 2
        return print_report(await reconcile(plugin, days=args.days, max_calls=args.max_calls))

    def arguments(parser: argparse.ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="billing_command", required=True)
        one = sub.add_parser("reconcile", help="check recent orders against MyFatoorah; exit 1 on any mismatch")
        s = plugin.settings
        one.add_argument("--days", type=_bounded(1, 90), default=s.reconcile_days, help="orders of the last N days")
        one.add_argument("--max-calls", type=_bounded(1, 10_000), default=s.max_reconcile_calls)

    return Command("billing", "billing operations: `reconcile`", run, arguments)


def _bounded(low: int, high: int) -> argparse._ActionType:
    def parse(text: str) -> int:
        value = int(text) if text.isascii() and text.isdigit() else -1
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be a whole number from {low} to {high}")
        return value

    return parse


def print_report(report: Report) -> int:
    """Print the report for an operator; the exit code: 0 when every order agrees and was checked, else 1."""
    for m in report.mismatches:
        took = "" if m.provider_fils in (None, m.amount_fils) else f", {m.provider_fils} fils in all"
        print(
            f"MISMATCH {m.kind}: order {m.order_id} (account {m.account_id}, {m.product}, {m.amount_fils} fils) "
            f"is {m.order_status} here, MyFatoorah says {m.provider_status}{took} (invoice {m.invoice_id})"
        )
    print(f"reconcile: {report.checked} of {report.orders} orders checked, {len(report.mismatches)} mismatches")
    if report.stopped is not None:
        print(f"reconcile: stopped early: {report.stopped}", file=sys.stderr)
    return 0 if report.ok else 1
