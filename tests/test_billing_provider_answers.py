"""MyFatoorah's GetPaymentStatus as the real service writes it, not as we would like it: the transaction's
currency is "KD" (not "KWD") and its amounts are grouped text ("1,200.000"). A payment written that way is
credited, on SQLite and MariaDB; it is neither disputed nor left pending as a malformed answer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.fakes.myfatoorah import FakeMyFatoorah, FakeSettings, run_fake
from tests.support.billing import checkout, ledger_rows, order_row, pay, shop
from tests.support.portal import register_user


@pytest.fixture
async def fake() -> AsyncIterator[FakeMyFatoorah]:
    async with run_fake(FakeSettings()) as running:
        yield running


async def test_a_payment_myfatoorah_writes_in_kd_is_credited_not_disputed(
    serve: Any, ollama: Any, db_url: str, fake: FakeMyFatoorah
) -> None:
    async with shop(serve, ollama, db_url, fake, webhooks=False) as served:
        user = await register_user(served)
        order = await checkout(served, user, "pack-5000")
        status, result = await pay(served, fake, order)
        (invoice,) = fake.invoices.values()
        (transaction,) = fake.record(invoice)["InvoiceTransactions"]  # type: ignore[misc]
        assert transaction["Currency"] == "KD" and transaction["PaidCurrency"] == "KD"
        assert (status, result["result"]) == (303, "paid")
        row = await order_row(served, order["id"])
        assert row.status == "paid" and row.confirmed_currency is None
        (ledger,) = await ledger_rows(served, user.account_id)
        assert ledger.amount_milli == 5_000_000


async def test_a_pack_above_a_thousand_dinars_is_credited_from_grouped_amounts(
    serve: Any, ollama: Any, db_url: str, fake: FakeMyFatoorah
) -> None:
    packs = [{"id": "pack-big", "credits": 2_000_000, "price_fils": 1_200_000}]
    async with shop(serve, ollama, db_url, fake, webhooks=False, packs=packs) as served:
        user = await register_user(served)
        order = await checkout(served, user, "pack-big")
        status, result = await pay(served, fake, order)
        (invoice,) = fake.invoices.values()
        (transaction,) = fake.record(invoice)["InvoiceTransactions"]  # type: ignore[misc]
        assert transaction["TransationValue"] == "1,200.000"
        assert (status, result["result"]) == (303, "paid")
        (ledger,) = await ledger_rows(served, user.account_id)
        assert ledger.amount_milli == 2_000_000_000
