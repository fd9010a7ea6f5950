"""GET /api/admin/overview on SQLite and MariaDB: who may call it, its body's shape, and its numbers after
real requests through the gateway (local, and cloud through the failover plugin), a paid order, a refund and
users registering, with windows starting at Asia/Kuwait's midnights; the local upstream's queue while
requests wait; the roll-ups it reads equal the usage rows' sums after concurrent requests (each request in
its own transactions, or leases settled in batches), `reconcile` finds a roll-up edited by hand and
`credits rollup-rebuild` mends it; the migration fills the roll-ups from usage rows already there."""

from __future__ import annotations

import argparse
import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from alembic import command

from edge import migrate
from edge.clock import utc_now
from edge.db import sync_url
from edge.services import CREDITS
from plugins.auth_keys.tables import users
from plugins.billing.tables import orders
from plugins.credits.reconcile import rollup_command, run_reconcile
from plugins.credits.rollups import SHARDS
from plugins.credits.tables import usage, usage_daily, usage_monthly
from tests.conftest import all_version_locations
from tests.fakes.myfatoorah import FakeMyFatoorah, FakeSettings, run_fake
from tests.support.admin import admin_config, text_of
from tests.support.billing import WEBHOOK_SECRET, order_row
from tests.support.billing_admin import call, paid_order
from tests.support.bodies import chat_body
from tests.support.credits import table_rows, until_settled
from tests.support.portal import LoggedIn, create_key, register_user

CLOUD_MODEL = "deepseek-v3.1:671b-cloud"
KUWAIT = ZoneInfo("Asia/Kuwait")
SUMS = ("requests", "prompt_tokens", "completion_tokens", "charged_milli")


@pytest.fixture
async def fake() -> AsyncIterator[FakeMyFatoorah]:
    async with run_fake(FakeSettings(webhook_secret=WEBHOOK_SECRET, webhook_retry_seconds=0.05)) as running:
        yield running


def overview_config(ollama: Any, cloud: Any, db_url: str, fake: FakeMyFatoorah | None, **credits: Any) -> Any:
    """auth_keys, tiers, credits, billing and admin, with failover in front of the local and cloud fakes."""
    config = admin_config(ollama, db_url, fake)
    config["upstreams"]["cloud"]["base_url"] = f"{cloud.url}/v1"
    config["plugins"].append({"name": "failover", "settings": {"retry_backoff_seconds": 0.01}})
    for entry in config["plugins"]:
        if entry["name"] == "credits":
            entry["settings"] = {**entry.get("settings", {}), **credits}
    return config


async def _paying(served: Any, **kw: Any) -> tuple[LoggedIn, str]:
    user = await register_user(served, **kw)
    await served.gateway.service(CREDITS).grant(
        account_id=user.account_id, amount_milli=1_000_000, kind="grant", idempotency_key=f"t-{user.user_id}"
    )
    return user, await create_key(served, user)


async def _chat(served: Any, secret: str, model: str = "llama3.2:3b") -> int:
    headers = {"content-type": "application/json", "Authorization": f"Bearer {secret}"}
    async with served.request("POST", "/v1/chat/completions", data=chat_body(model), headers=headers) as resp:
        await resp.read()
        return int(resp.status)


def _sums(rows: list[dict[str, Any]]) -> dict[str, int]:
    return {
        "requests": len(rows),
        "prompt_tokens": sum(r["prompt_tokens"] for r in rows),
        "completion_tokens": sum(r["completion_tokens"] for r in rows),
        "charged_milli": sum(r["cost_milli"] for r in rows),
    }


async def _overview(served: Any, admin: LoggedIn) -> dict[str, Any]:
    status, body = await call(served, "GET", "/api/admin/overview", admin)
    assert status == 200, body
    return body


async def _reconcile(served: Any) -> int:
    return await run_reconcile(served.gateway, argparse.Namespace(release_expired=False))


async def test_only_an_admin_gets_the_overview(serve: Any, ollama: Any, cloud: Any, db_url: str) -> None:
    async with serve(overview_config(ollama, cloud, db_url, None)) as served:
        user = await register_user(served)
        admin = await register_user(served, admin=True)
        assert (await text_of(served, "/api/admin/overview", {}))[0] == 401
        status, body = await call(served, "GET", "/api/admin/overview", user)
        assert (status, body["error"]["code"]) == (403, "admin_required")
        status, body = await call(served, "GET", "/api/admin/overview?days=7", admin)
        assert (status, body["error"]["code"]) == (422, "field_unknown")
        async with served.request("POST", "/api/admin/overview", headers=admin.headers) as resp:
            assert resp.status == 405
        body = await _overview(served, admin)
        assert set(body) == {
            "generated_at",
            "timezone",
            "today",
            "users",
            "subscriptions",
            "usage",
            "revenue",
            "cloud_budget",
            "upstreams",
            "top_accounts",
            "top_models",
        }
        assert body["timezone"] == "Asia/Kuwait"
        zero = dict.fromkeys(SUMS, 0)
        assert body["usage"]["today"] == {"local": zero, "cloud": zero, "total": zero}
        assert set(body["usage"]) == {"today", "last_7_days", "last_30_days", "this_month"}
        assert body["users"]["by_tier"] == {"basic": 2, "pro": 0, "enterprise": 0}
        assert body["top_accounts"] == [] and body["top_models"] == []
        assert body["revenue"]["this_month"]["paid_fils"] == 0 and body["revenue"]["currency"] == "KWD"


async def test_the_overview_counts_requests_orders_and_users(
    serve: Any, ollama: Any, cloud: Any, db_url: str, fake: FakeMyFatoorah
) -> None:
    async with serve(overview_config(ollama, cloud, db_url, fake)) as served:
        fake.settings.webhook_url = served.url + "/api/billing/webhooks/myfatoorah"
        admin = await register_user(served, admin=True)
        basic, basic_key = await _paying(served)
        soon = utc_now().replace(microsecond=0) + timedelta(days=3)
        pro, pro_key = await _paying(served, tier="pro", plan_expires_at=soon)
        await register_user(served, tier="enterprise", plan_expires_at=soon + timedelta(days=20))
        await register_user(served, tier="pro", plan_expires_at=utc_now().replace(microsecond=0) - timedelta(days=1))

        for secret, model in (
            [(basic_key, "llama3.2:3b")] * 2 + [(pro_key, "llama3.2:3b")] + [(pro_key, CLOUD_MODEL)] * 2
        ):
            assert await _chat(served, secret, model) == 200
        await until_settled(served.gateway)
        order = await paid_order(served, fake, basic, "pack-5000")

        body = await _overview(served, admin)
        rows = await table_rows(served.gateway, "usage")
        assert {r["route"] for r in rows} == {"local", "cloud"}
        today = {
            "local": _sums([r for r in rows if r["route"] == "local"]),
            "cloud": _sums([r for r in rows if r["route"] == "cloud"]),
            "total": _sums(rows),
        }
        assert today["local"]["requests"] == 3 and today["cloud"]["requests"] == 2
        assert today["cloud"]["charged_milli"] > 0 and today["local"]["charged_milli"] > 0
        for window in ("today", "last_7_days", "last_30_days", "this_month"):
            assert body["usage"][window] == today, window
        assert body["today"] == str(rows[0]["day"])

        assert body["users"] == {
            "total": 5,
            "by_tier": {"basic": 2, "pro": 2, "enterprise": 1},
            "new": {"today": 5, "last_7_days": 5, "last_30_days": 5},
        }
        # Active: plans that have not ended (the lapsed Pro plan is not); expiring: within 7 days.
        assert body["subscriptions"] == {"active": 2, "expiring_7_days": 1}

        price = (await order_row(served, order["id"])).price_fils
        assert body["revenue"]["this_month"] | {"since": None, "until": None} == {
            "since": None,
            "until": None,
            "paid_orders": 1,
            "paid_fils": price,
            "refunded_fils": 0,
            "net_fils": price,
        }
        assert body["revenue"]["last_month"]["paid_orders"] == 0

        assert body["cloud_budget"]["used"] == 2 and body["cloud_budget"]["cap"] == 500
        assert [(u["name"], u["kind"], u["state"], u["queue_depth"]) for u in body["upstreams"]] == [
            ("ollama", "local", "up", 0),
            ("cloud", "cloud", "up", 0),
        ]

        by_account: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for r in rows:
            by_account[r["account_id"]].append(r)
        expected = sorted(
            ({"account_id": a} | _sums(rs) for a, rs in by_account.items()),
            key=lambda t: (-t["charged_milli"], t["account_id"]),
        )
        assert [{k: t[k] for k in ("account_id", *SUMS)} for t in body["top_accounts"]] == expected
        assert body["top_accounts"][0]["account_id"] == pro.account_id  # cloud costs twice as much
        assert body["top_accounts"][0]["tier"] == "pro"
        by_model: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in rows:
            by_model[r["model"]].append(r)
        models = sorted(({"model": m} | _sums(rs) for m, rs in by_model.items()), key=lambda t: -t["charged_milli"])
        assert body["top_models"] == models and len(models) == 2
        assert sum(m["charged_milli"] for m in body["top_models"]) == today["total"]["charged_milli"]
        assert await _reconcile(served) == 0


async def test_the_overview_shows_requests_waiting_for_the_local_upstream(
    serve: Any, ollama: Any, cloud: Any, db_url: str
) -> None:
    ollama.settings.latency = 1.5
    config = overview_config(ollama, cloud, db_url, None)
    config["upstreams"]["ollama"]["parallel"] = 1
    async with serve(config) as served:
        admin = await register_user(served, admin=True)
        _, secret = await _paying(served)  # Basic: never spills to the cloud, so it waits in line
        calls = [asyncio.ensure_future(_chat(served, secret)) for _ in range(3)]
        seen: list[tuple[int | None, int]] = []
        for _ in range(40):
            (local,) = [u for u in (await _overview(served, admin))["upstreams"] if u["kind"] == "local"]
            seen.append((local["slots_in_use"], local["queue_depth"]))
            if seen[-1] == (1, 2):
                break
            await asyncio.sleep(0.05)
        assert seen[-1] == (1, 2), seen
        assert await asyncio.gather(*calls) == [200] * 3
        (local,) = [u for u in (await _overview(served, admin))["upstreams"] if u["kind"] == "local"]
        assert (local["state"], local["parallel"], local["slots_in_use"], local["queue_depth"]) == ("up", 1, 0, 0)


async def test_windows_start_at_local_midnights(
    serve: Any, ollama: Any, cloud: Any, db_url: str, fake: FakeMyFatoorah
) -> None:
    """New users and revenue count from Asia/Kuwait's midnights: a second before one is the window before."""
    async with serve(overview_config(ollama, cloud, db_url, fake)) as served:
        fake.settings.webhook_url = served.url + "/api/billing/webhooks/myfatoorah"
        admin = await register_user(served, admin=True)
        buyer, early = await register_user(served), await register_user(served)
        midnight = datetime.now(KUWAIT).replace(hour=0, minute=0, second=0, microsecond=0)
        month = midnight.replace(day=1)
        second = timedelta(seconds=1)
        await _set(served, users, users.c.id == early.user_id, created_at=_utc(midnight) - second)
        await _set(served, users, users.c.id == admin.user_id, created_at=_utc(midnight - timedelta(days=6)) - second)
        paid = [await paid_order(served, fake, buyer, "pack-5000") for _ in range(3)]
        await _set(served, orders, orders.c.reference == paid[1]["id"], paid_at=_utc(month))
        await _set(served, orders, orders.c.reference == paid[2]["id"], paid_at=_utc(month) - second)

        refund = {"amount_fils": 2000, "reason": "customer asked"}
        assert (await call(served, "POST", f"/api/admin/orders/{paid[0]['id']}/refund", admin, refund))[0] == 201

        body = await _overview(served, admin)
        assert body["users"]["new"] == {"today": 1, "last_7_days": 2, "last_30_days": 3}
        revenue = body["revenue"]
        assert revenue["this_month"]["since"] == revenue["last_month"]["until"] == _utc(month).isoformat() + "Z"
        this_month = [revenue["this_month"][k] for k in ("paid_orders", "paid_fils", "refunded_fils", "net_fils")]
        assert this_month == [2, 10_000, 2_000, 8_000]
        assert (revenue["last_month"]["paid_orders"], revenue["last_month"]["paid_fils"]) == (1, 5_000)
        # The billing plugin's own revenue report says the same of this month.
        query = f"from={month.date().isoformat()}&to={midnight.date().isoformat()}"
        status, report = await call(served, "GET", f"/api/admin/revenue?{query}", admin)
        assert status == 200 and (report["orders"], report["paid_fils"], report["refunds_fils"]) == (2, 10_000, 2_000)

        # An order whose payment is disputed is not revenue.
        await _set(served, orders, orders.c.reference == paid[0]["id"], status="disputed")
        body = await _overview(served, admin)
        assert body["revenue"]["this_month"]["paid_orders"] == 1


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None)


async def _set(served: Any, table: sa.Table, where: Any, **values: Any) -> None:
    async with served.gateway.database.begin() as conn:
        assert (await conn.execute(sa.update(table).where(where).values(**values))).rowcount == 1


async def _rollups_equal_usage(served: Any) -> None:
    """Both roll-ups hold exactly the usage rows' sums, and reconcile agrees."""
    rows = await table_rows(served.gateway, "usage")
    daily = await _table(served, usage_daily)
    monthly = await _table(served, usage_monthly)
    assert sum(r["requests"] for r in daily) == len(rows) == sum(r["requests"] for r in monthly)
    for table in (daily, monthly):
        assert {k: sum(r[k] for r in table) for k in SUMS} == _sums(rows)
    per_account: dict[int, int] = defaultdict(int)
    for r in rows:
        per_account[r["account_id"]] += r["cost_milli"]
    assert {r["account_id"]: r["charged_milli"] for r in monthly} == per_account
    assert await _reconcile(served) == 0


async def _table(served: Any, table: sa.Table) -> list[dict[str, Any]]:
    async with served.gateway.database.connect() as conn:
        return [dict(r._mapping) for r in (await conn.execute(sa.select(table))).all()]


@pytest.mark.parametrize("leases", [{}, {"lease_requests": 16, "lease_idle_ms": 50}], ids=["holds", "leases"])
async def test_rollups_equal_usage_rows_after_concurrent_requests(
    serve: Any, ollama: Any, cloud: Any, db_url: str, leases: dict[str, int]
) -> None:
    async with serve(overview_config(ollama, cloud, db_url, None, **leases)) as served:
        admin = await register_user(served, admin=True)
        callers = [await _paying(served, tier="pro") for _ in range(3)]
        calls = [
            _chat(served, secret, CLOUD_MODEL if i % 4 == 0 else "llama3.2:3b")
            for i in range(12)
            for _, secret in callers
        ]
        assert set(await asyncio.gather(*calls)) == {200}
        if leases:
            await asyncio.sleep(0.3)  # idle leases give their room back; their batches are written
        await until_settled(served.gateway, within=10)
        await _rollups_equal_usage(served)
        body = await _overview(served, admin)
        rows = await table_rows(served.gateway, "usage")
        assert body["usage"]["today"]["total"] == _sums(rows) and len(rows) == 36
        for route in ("local", "cloud"):  # the local queue spills some requests to the cloud
            assert body["usage"]["today"][route] == _sums([r for r in rows if r["route"] == route])
        assert len(body["top_accounts"]) == 3

        # A roll-up edited by hand is found; a rebuild from the usage rows mends it.
        async with served.gateway.database.begin() as conn:
            await conn.execute(sa.update(usage_monthly).values(charged_milli=usage_monthly.c.charged_milli + 1))
        assert await _reconcile(served) == 1
        rebuild = rollup_command()
        assert await rebuild.run(served.gateway, argparse.Namespace(credits_command="rollup-rebuild")) == 0
        await _rollups_equal_usage(served)


def _old_usage_rows() -> list[dict[str, Any]]:
    """Ten usage rows of three accounts in one shard, over the last day of a month and the first of the next."""
    return [
        {
            "charge_id": f"c{i}",
            "request_id": f"r{i}",
            "account_id": 7 + i % 3 * SHARDS,
            "model": "llama3.2:3b" if i % 2 else CLOUD_MODEL,
            "endpoint": "chat",
            "route": "local" if i % 2 else "cloud",
            "stream": False,
            "prompt_tokens": 10 + i,
            "completion_tokens": 20,
            "usage_source": "upstream",
            "multiplier": 1,
            "cost_milli": 30 + i,
            "status": 200,
            "outcome": "ok",
            "day": date(2026, 10, 31) + timedelta(days=i % 2),
            "created_at": utc_now(),
        }
        for i in range(10)
    ]


async def test_the_migration_fills_the_rollups_from_usage_rows_already_there(db_url: str) -> None:
    """A database upgraded from credits_0003 starts with roll-ups equal to its usage rows."""
    cfg = migrate.alembic_config(all_version_locations())
    rows = _old_usage_rows()
    engine = sa.create_engine(sync_url(db_url), future=True)
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "credits_0003")
        with engine.begin() as conn:
            conn.execute(usage.insert(), rows)
    finally:
        migrate.upgrade(db_url, all_version_locations())
    try:
        with engine.connect() as conn:
            monthly = {
                (r.month, r.account_id): (r.requests, r.charged_milli) for r in conn.execute(sa.select(usage_monthly))
            }
            daily = {
                (r.day, r.route, r.shard): (r.requests, r.charged_milli) for r in conn.execute(sa.select(usage_daily))
            }
    finally:
        engine.dispose()
    want_monthly: dict[tuple[date, int], tuple[int, int]] = {}
    for r in rows:
        key = (r["day"].replace(day=1), r["account_id"])
        n, cost = want_monthly.get(key, (0, 0))
        want_monthly[key] = (n + 1, cost + r["cost_milli"])
    assert monthly == want_monthly and len(monthly) == 6
    costs = [r["cost_milli"] for r in rows]
    assert daily == {
        (date(2026, 10, 31), "cloud", 7 % SHARDS): (5, sum(costs[0::2])),
        (date(2026, 11, 1), "local", 7 % SHARDS): (5, sum(costs[1::2])),
    }
