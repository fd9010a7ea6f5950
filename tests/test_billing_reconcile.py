"""Reconciliation on SQLite and MariaDB: `python -m edge billing reconcile` exits 0 when every recent order
agrees with MyFatoorah, and 1 naming both kinds of mismatch (paid there but not credited here, credited
here but not paid there), each also stored as a durable `billing.mismatch` event."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fakes.myfatoorah import FakeMyFatoorah, FakeSettings, run_fake
from tests.support.billing import WEBHOOK_SECRET, billing_config, checkout, mismatches, shop
from tests.support.billing_admin import paid_order
from tests.support.portal import register_user

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def fake() -> AsyncIterator[FakeMyFatoorah]:
    async with run_fake(FakeSettings(webhook_secret=WEBHOOK_SECRET, webhook_retry_seconds=0.05)) as running:
        yield running


async def reconcile(config_file: Path, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edge",
        "--config",
        str(config_file),
        "billing",
        "reconcile",
        *args,
        cwd=ROOT,
        env=dict(os.environ),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=120)
    return int(proc.returncode or 0), out.decode()


async def test_reconcile_exits_0_when_all_agree_and_1_naming_both_kinds_of_mismatch(
    serve: Any, ollama: Any, db_url: str, fake: FakeMyFatoorah, tmp_path: Path
) -> None:
    config_file = tmp_path / "gateway.yaml"
    config_file.write_text(yaml.safe_dump(billing_config(ollama, db_url, fake)), encoding="utf-8")
    async with shop(serve, ollama, db_url, fake) as served:
        user = await register_user(served)
        await paid_order(served, fake, user, "pack-5000")
        await checkout(served, user, "pack-15000")  # pending: MyFatoorah agrees it is unpaid
        code, out = await reconcile(config_file)
        assert code == 0, out
        assert "2 of 2 orders checked, 0 mismatches" in out

        # Paid at MyFatoorah, and every word of it lost on the way back: not credited here.
        fake.settings.webhook_url = None
        lost = await checkout(served, user, "pro")
        fake.pay(fake.invoices[int(lost["invoice_id"])])
        # Credited here, while MyFatoorah's invoice is not paid (a credit no payment backs).
        wrong = await paid_order(served, fake, user, "pack-5000")
        fake.invoices[int(wrong["invoice_id"])].status = "Pending"
        code, out = await reconcile(config_file)
        assert code == 1, out
        assert f"MISMATCH paid_not_credited: order {lost['id']}" in out
        assert f"MISMATCH credited_not_paid: order {wrong['id']}" in out
        assert "4 of 4 orders checked, 2 mismatches" in out
        found = {m["order_id"]: m for m in await mismatches(served)}
        assert found[lost["id"]]["kind"] == "paid_not_credited" and found[lost["id"]]["order_status"] == "pending"
        assert found[wrong["id"]]["kind"] == "credited_not_paid" and found[wrong["id"]]["provider_status"] == "pending"
        assert found[wrong["id"]]["account_id"] == user.account_id and len(found) == 2

        # The call cap and an outage: what could not be checked is said, and is not a clean run.
        code, out = await reconcile(config_file, "--max-calls", "1")
        assert code == 1 and "1 of 4 orders checked" in out and "cap of 1" in out
        await fake.go_down()
        code, out = await reconcile(config_file)
        assert code == 1 and "0 of 4 orders checked" in out and "could not be asked" in out
        await fake.come_up()
        assert (await reconcile(config_file, "--days", "0"))[0] == 2


async def test_reconcile_reports_an_invoice_paid_twice(
    serve: Any, ollama: Any, db_url: str, fake: FakeMyFatoorah, tmp_path: Path
) -> None:
    config_file = tmp_path / "gateway.yaml"
    config_file.write_text(yaml.safe_dump(billing_config(ollama, db_url, fake)), encoding="utf-8")
    async with shop(serve, ollama, db_url, fake, webhooks=False) as served:
        user = await register_user(served)
        order = await paid_order(served, fake, user, "pack-5000")
        fake.pay(fake.invoices[int(order["invoice_id"])])  # paid again; no word of it reaches the gateway
        code, out = await reconcile(config_file)
        assert code == 1, out
        assert f"MISMATCH paid_twice: order {order['id']}" in out and "10000 fils in all" in out
        assert "1 of 1 orders checked, 1 mismatches" in out
        (found,) = await mismatches(served)
        assert (found["kind"], found["order_id"], found["provider_fils"]) == ("paid_twice", order["id"], 10_000)
