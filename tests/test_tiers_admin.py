"""`PATCH /api/admin/accounts/{id}`: an admin sets a plan by hand, and every cached key follows at once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from plugins.auth_keys.tables import accounts
from tests.conftest import base_config
from tests.support.inputs import field_codes
from tests.support.portal import auth_plugin_entry, bearer, create_key, register_user
from tests.test_tiers_access import ALL_MODELS, BASIC_MODELS


@pytest.fixture
def cfg(ollama: Any, db_url: str) -> dict[str, Any]:
    return base_config(
        ollama_url=ollama.url,
        database_url=db_url,
        plugins=[auth_plugin_entry(), {"name": "tiers"}, {"name": "ratelimit"}],
    )


async def models_of(gw: Any, secret: str) -> tuple[list[str], str]:
    async with gw.request("GET", "/v1/models", headers=bearer(secret)) as r:
        assert r.status == 200
        return [m["id"] for m in (await r.json())["data"]], r.headers["x-ratelimit-limit-requests"]


async def patch(gw: Any, account_id: int, body: Any, headers: dict[str, str]) -> tuple[int, Any]:
    async with gw.request("PATCH", f"/api/admin/accounts/{account_id}", json=body, headers=headers) as r:
        return r.status, await r.json()


async def plan_row(gw: Any, account_id: int) -> tuple[str, datetime | None]:
    async with gw.gateway.database.connect() as conn:
        row = (
            await conn.execute(
                sa.select(accounts.c.tier, accounts.c.plan_expires_at).where(accounts.c.id == account_id)
            )
        ).one()
    return row.tier, row.plan_expires_at


async def test_admin_sets_a_plan_and_the_customers_cached_key_follows(serve: Any, cfg: dict[str, Any]) -> None:
    async with serve(cfg) as gw:
        admin = await register_user(gw, admin=True)
        customer = await register_user(gw)
        secret = await create_key(gw, customer)
        before = await models_of(gw, secret)  # the key is cached as Basic now
        until = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0)
        status, body = await patch(
            gw, customer.account_id, {"tier": "pro", "plan_expires_at": until.isoformat()}, admin.headers
        )
        after = await models_of(gw, secret)
        row = await plan_row(gw, customer.account_id)
    assert before == (BASIC_MODELS, "10")
    assert status == 200
    assert body == {"id": customer.account_id, "tier": "pro", "plan_expires_at": until.strftime("%Y-%m-%dT%H:%M:%SZ")}
    assert after == (ALL_MODELS, "30")
    assert row == ("pro", until.replace(tzinfo=None))


async def test_an_expiry_in_the_past_falls_back_and_null_renews(serve: Any, cfg: dict[str, Any]) -> None:
    async with serve(cfg) as gw:
        admin = await register_user(gw, admin=True)
        customer = await register_user(gw, tier="pro")
        secret = await create_key(gw, customer)
        assert (await models_of(gw, secret))[0] == ALL_MODELS
        # Kuwait time, three hours ahead of UTC: kept and answered in UTC.
        status, body = await patch(
            gw, customer.account_id, {"plan_expires_at": "2025-01-31T03:00:00+03:00"}, admin.headers
        )
        lapsed = await models_of(gw, secret)
        lapsed_row = await plan_row(gw, customer.account_id)
        renewed_status, renewed = await patch(gw, customer.account_id, {"plan_expires_at": None}, admin.headers)
        back = await models_of(gw, secret)
    assert status == 200 and body["tier"] == "pro" and body["plan_expires_at"] == "2025-01-31T00:00:00Z"
    assert lapsed == (BASIC_MODELS, "10")
    assert lapsed_row == ("pro", datetime(2025, 1, 31))
    assert renewed_status == 200 and renewed["plan_expires_at"] is None
    assert back == (ALL_MODELS, "30")


async def test_only_an_admin_with_a_valid_body_may_set_a_plan(serve: Any, cfg: dict[str, Any]) -> None:
    async with serve(cfg) as gw:
        admin = await register_user(gw, admin=True)
        customer = await register_user(gw)
        target = customer.account_id
        results = {
            "anonymous": await patch(gw, target, {"tier": "pro"}, {}),
            "customer": await patch(gw, target, {"tier": "pro"}, customer.headers),
            "no_csrf": await patch(gw, target, {"tier": "pro"}, {"Cookie": admin.headers["Cookie"]}),
            "no_account": await patch(gw, 999_999, {"tier": "pro"}, admin.headers),
            "bad_tier": await patch(gw, target, {"tier": "gold"}, admin.headers),
            "bad_date": await patch(gw, target, {"tier": "pro", "plan_expires_at": "next tuesday"}, admin.headers),
            "unknown": await patch(gw, target, {"credits": 5}, admin.headers),
            "empty": await patch(gw, target, {}, admin.headers),
        }
        row = await plan_row(gw, target)
    codes = {name: (status, body["error"]["code"]) for name, (status, body) in results.items()}
    assert codes == {
        "anonymous": (401, "not_authenticated"),
        "customer": (403, "admin_required"),
        "no_csrf": (403, "csrf_failed"),
        "no_account": (404, "account_not_found"),
        "bad_tier": (422, "tier_invalid"),
        "bad_date": (422, "plan_expires_at_invalid"),
        "unknown": (422, "field_unknown"),
        "empty": (422, "tier_required"),
    }
    assert field_codes(results["bad_date"][1]) == {"plan_expires_at": "plan_expires_at_invalid"}
    assert results["bad_tier"][1]["error"]["param"] == "tier"
    assert row == ("basic", None)
