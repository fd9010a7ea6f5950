"""The ledger's guarantees: idempotent grants, the sweeper, reconcile, and balance events fired once."""

from __future__ import annotations

import argparse
import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from plugins.credits.reconcile import run_reconcile
from plugins.credits.rows import utcnow
from plugins.credits.tables import balances, holds, ledger
from tests.support.auth import TokenAuth, bearer
from tests.support.bodies import chat_body
from tests.support.credits import crashed_request, credits_config, table_rows, until_settled
from tests.support.recorder import Recorder
from tests.support.servers import run_cli


def post(served: Any, account: int, **headers: str) -> Any:
    return served.request(
        "POST",
        "/v1/chat/completions",
        data=chat_body(),
        headers={"content-type": "application/json", **bearer(account), **headers},
    )


async def execute(served: Any, statement: Any) -> None:
    async with served.gateway.database.begin() as conn:
        await conn.execute(statement)


async def reconcile(served: Any, capsys: pytest.CaptureFixture[str], *, release: bool = False) -> tuple[int, str]:
    code = await run_reconcile(served.gateway, argparse.Namespace(release_expired=release))
    return code, capsys.readouterr().out


async def test_grants_are_idempotent_by_kind_and_reference(db_url: str, ollama: Any, serve: Any) -> None:
    async with serve(credits_config(ollama_url=ollama.url, database_url=db_url), plugins=[TokenAuth()]) as served:
        plugin = served.gateway.plugin("credits")
        first = await plugin.grant(
            account_id=1, amount_milli=5_000_000, kind="topup", reference="pay-1", actor="billing", reason="pack 5000"
        )
        again = await plugin.grant(account_id=1, amount_milli=5_000_000, kind="topup", reference="pay-1")
        other_kind = await plugin.grant(account_id=1, amount_milli=1000, kind="refund", reference="pay-1")
        with pytest.raises(ValueError, match="another account"):
            await plugin.grant(account_id=2, amount_milli=1, kind="topup", reference="pay-1")
        for bad in (
            {"amount_milli": -5, "kind": "topup"},
            {"amount_milli": 0, "kind": "grant"},
            {"amount_milli": 5, "kind": "usage"},
            {"amount_milli": 5, "kind": "gift"},
        ):
            with pytest.raises(ValueError):
                await plugin.grant(account_id=1, reference="bad", **bad)
        rows = await table_rows(served.gateway, "ledger", account_id=1)
        balance = await plugin.balance(1)
    assert first["created"] and not again["created"] and again["id"] == first["id"]
    assert (first["kind"], first["amount_milli"], first["balance_after_milli"], first["actor"], first["reason"]) == (
        "topup",
        5_000_000,
        5_000_000,
        "billing",
        "pack 5000",
    )
    assert first["created_at"].endswith("Z")
    assert other_kind["balance_after_milli"] == 5_001_000
    assert [r["amount_milli"] for r in rows] == [5_000_000, 1000]
    assert balance == {"account_id": 1, "balance_milli": 5_001_000, "reserved_milli": 0, "available_milli": 5_001_000}


async def test_concurrent_grants_with_one_reference_credit_once(db_url: str, ollama: Any, serve: Any) -> None:
    async with serve(credits_config(ollama_url=ollama.url, database_url=db_url), plugins=[TokenAuth()]) as served:
        plugin = served.gateway.plugin("credits")
        results = await asyncio.gather(
            *(plugin.grant(account_id=3, amount_milli=700, kind="topup", reference="pay-same") for _ in range(8))
        )
        assert sum(r["created"] for r in results) == 1
        assert (await plugin.balance(3))["balance_milli"] == 700


async def test_the_sweeper_releases_holds_left_by_a_crashed_worker(db_url: str, ollama: Any, serve: Any) -> None:
    config = credits_config(ollama_url=ollama.url, database_url=db_url, sweep_interval_seconds=0.05)
    async with serve(config, plugins=[TokenAuth()]) as served:
        plugin = served.gateway.plugin("credits")
        await plugin.grant(account_id=1, amount_milli=100_000, kind="grant", reference="seed")
        lost = crashed_request(served, 1)
        await plugin.resayil_reserve(ctx=lost)
        held = (await plugin.balance(1))["reserved_milli"]
        assert held == len(lost.body) + 64
        (hold,) = await table_rows(served.gateway, "holds", account_id=1)
        # The hold lives for timeouts.total_seconds (30 here) plus the grace: a live request is never swept.
        assert hold["expires_at"] >= utcnow() + timedelta(seconds=30 + 120 - 2)
        await asyncio.sleep(0.3)
        assert (await plugin.balance(1))["reserved_milli"] == held
        await execute(served, holds.update().values(expires_at=utcnow() - timedelta(seconds=1)))
        await until_settled(served.gateway, 1, within=5)
        assert await plugin.balance(1) == {
            "account_id": 1,
            "balance_milli": 100_000,
            "reserved_milli": 0,
            "available_milli": 100_000,
        }
        # Should the worker come back after all, the released hold is not charged a second time.
        lost.usage.prompt_tokens, lost.usage.completion_tokens, lost.usage.source = 10, 10, "upstream"
        await plugin.resayil_settle(ctx=lost)
        assert (await plugin.balance(1))["balance_milli"] == 100_000
        assert await table_rows(served.gateway, "usage") == []
        assert len(await table_rows(served.gateway, "ledger")) == 1


async def test_reconcile_passes_on_real_traffic_and_names_each_kind_of_tampering(
    db_url: str, ollama: Any, serve: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    config = credits_config(ollama_url=ollama.url, database_url=db_url, sweep_interval_seconds=3600)
    async with serve(config, plugins=[TokenAuth()]) as served:
        plugin = served.gateway.plugin("credits")
        for account in (1, 2):
            await plugin.grant(account_id=account, amount_milli=50_000, kind="grant", reference=f"seed-{account}")
            for _ in range(2):
                async with post(served, account) as r:
                    assert r.status == 200
        await until_settled(served.gateway)
        assert await reconcile(served, capsys) == (0, "reconcile: 2 account(s) checked, 0 difference(s)\n")

        state = await plugin.balance(1)
        await execute(
            served,
            balances.update().where(balances.c.account_id == 1).values(balance_milli=balances.c.balance_milli + 5),
        )
        code, out = await reconcile(served, capsys)
        assert code == 1
        assert (
            f"account 1: balance_milli is {state['balance_milli'] + 5} but its ledger sums to "
            f"{state['balance_milli']} (differs by 5)"
        ) in out
        assert "account 2" not in out
        await execute(
            served,
            balances.update()
            .where(balances.c.account_id == 1)
            .values(balance_milli=state["balance_milli"], reserved_milli=7),
        )
        code, out = await reconcile(served, capsys)
        assert code == 1 and "account 1: reserved_milli is 7 but its live holds sum to 0 (differs by 7)" in out
        await execute(served, balances.update().where(balances.c.account_id == 1).values(reserved_milli=0))

        # A rewritten ledger row that still sums right is caught by the running balance.
        async with served.gateway.database.connect() as conn:
            first, second = (
                await conn.execute(
                    sa.select(ledger.c.id, ledger.c.amount_milli)
                    .where(ledger.c.account_id == 2)
                    .order_by(ledger.c.id)
                    .limit(2)
                )
            ).all()
        await execute(
            served, ledger.update().where(ledger.c.id == first.id).values(amount_milli=first.amount_milli - 1)
        )
        await execute(
            served, ledger.update().where(ledger.c.id == second.id).values(amount_milli=second.amount_milli + 1)
        )
        code, out = await reconcile(served, capsys)
        assert code == 1 and f"account 2: ledger row {first.id} says balance_after_milli" in out
        await execute(served, ledger.update().where(ledger.c.id == first.id).values(amount_milli=first.amount_milli))
        await execute(served, ledger.update().where(ledger.c.id == second.id).values(amount_milli=second.amount_milli))
        assert (await reconcile(served, capsys))[0] == 0

        # A hold past its expiry (its worker died), and one for an account without a balance row.
        await plugin.resayil_reserve(ctx=crashed_request(served, 2))
        await execute(served, holds.update().values(expires_at=utcnow() - timedelta(seconds=5)))
        await execute(
            served,
            holds.insert().values(
                id="orphan", account_id=99, request_id="r", amount_milli=3, created_at=utcnow(), expires_at=utcnow()
            ),
        )
        code, out = await reconcile(served, capsys)
        assert code == 1
        assert "account 2: 1 hold(s) past their expiry" in out
        assert "account 99: no balance row" in out
        await execute(served, holds.delete().where(holds.c.id == "orphan"))
        code, out = await reconcile(served, capsys, release=True)
        assert code == 0 and out.startswith("released 1 expired hold(s)\n")


async def test_reconcile_runs_from_the_command_line(tmp_path: Path, sqlite_url: str, ollama: Any, serve: Any) -> None:
    config = credits_config(ollama_url=ollama.url, database_url=sqlite_url)
    async with serve(config, plugins=[TokenAuth()]) as served:
        await served.gateway.plugin("credits").grant(account_id=1, amount_milli=10, kind="grant", reference="s")
        await execute(served, balances.update().values(balance_milli=11))
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    code, out, err = await run_cli("--config", str(path), "reconcile")
    assert code == 1, err
    assert "account 1: balance_milli is 11 but its ledger sums to 10 (differs by 1)" in out


# With leases (a short idle time, so that until_settled sees them given back) the events are the same.
LEASES = pytest.mark.parametrize("leases", [{}, {"lease_requests": 32, "lease_idle_ms": 50}], ids=["holds", "leases"])


@LEASES
async def test_credits_low_fires_once_per_crossing(
    db_url: str, ollama: Any, serve: Any, leases: dict[str, int]
) -> None:
    events = Recorder()
    config = credits_config(ollama_url=ollama.url, database_url=db_url, **leases)
    async with serve(config, plugins=[TokenAuth(), events]) as served:
        plugin = served.gateway.plugin("credits")
        # Basic: 1000 credits a month, so the warning line is 200 credits. Each request here costs 14 milli.
        await plugin.grant(account_id=1, amount_milli=200_020, kind="subscription", reference="month-1")
        for _ in range(4):
            async with post(served, 1) as r:
                assert r.status == 200
            await until_settled(served.gateway, 1)
        await served.gateway.drain()
        assert len(events.named("credits.low")) == 1
        await plugin.grant(account_id=1, amount_milli=10_000, kind="topup", reference="pack-1")
        async with post(served, 1) as r:
            assert r.status == 200
        await until_settled(served.gateway, 1)
        await served.gateway.drain()
        assert len(events.named("credits.low")) == 1  # above the line again: nothing to say
        await plugin.grant(
            account_id=1,
            amount_milli=-20_000,
            kind="adjustment",
            reference="fix-1",
            actor="user:1",
            reason="duplicate top-up",
        )
        await served.gateway.drain()
        balance = (await plugin.balance(1))["balance_milli"]
    low = events.named("credits.low")
    assert len(low) == 2
    assert low[0]["account_id"] == 1 and low[0]["balance_milli"] < 200_000 <= low[0]["balance_milli"] + 14
    assert low[0]["plan_credits_milli"] == 1_000_000 and low[0]["threshold_percent"] == 20
    assert low[0]["percent_remaining"] == 19 and low[0]["locale"] == "ar" and low[0]["tier"] == "basic"
    assert low[1]["balance_milli"] == balance


@LEASES
async def test_credits_exhausted_fires_once_until_the_next_top_up(
    db_url: str, ollama: Any, serve: Any, leases: dict[str, int]
) -> None:
    events = Recorder()
    config = credits_config(ollama_url=ollama.url, database_url=db_url, **leases)
    async with serve(config, plugins=[TokenAuth(), events]) as served:
        plugin = served.gateway.plugin("credits")
        for _ in range(3):
            async with served.request(
                "POST",
                "/v1/chat/completions",
                data=chat_body(),
                headers={"content-type": "application/json", **bearer(5, "pro", locale="en")},
            ) as r:
                assert r.status == 402
        await served.gateway.drain()
        assert len(events.named("credits.exhausted")) == 1
        await plugin.grant(account_id=5, amount_milli=10, kind="topup", reference="pack-5")
        async with post(served, 5) as r:
            assert r.status == 402
        await served.gateway.drain()
    exhausted = events.named("credits.exhausted")
    assert len(exhausted) == 2
    first = exhausted[0]
    assert (first["account_id"], first["balance_milli"], first["locale"], first["tier"]) == (5, 0, "en", "pro")
    assert first["top_up_url"] == "https://portal.example.test/#/billing"
    assert exhausted[1]["balance_milli"] == 10
