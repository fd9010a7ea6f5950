"""The operator's view: `/api/admin/cloud-budget` and `/api/admin/upstreams`, for admins only."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from tests.support.auth import TokenAuth
from tests.support.failover import CLOUD_MODEL, as_tier, assert_released, chat, failover_config
from tests.support.portal import auth_plugin_entry, register_user


def admin_config(ollama: Any, cloud: Any, db_url: str, redis_url: str, **settings: Any) -> dict[str, Any]:
    config = failover_config(
        ollama_url=ollama.url, cloud_url=cloud.url, database_url=db_url, redis_url=redis_url, **settings
    )
    config["plugins"].insert(0, auth_plugin_entry())
    return config


async def get(served: Any, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with served.request("GET", path, headers=headers or {}) as resp:
        return resp.status, await resp.json()


async def test_admins_see_the_cloud_budget_and_every_upstream(
    serve: Any, ollama: Any, cloud: Any, db_url: str, redis_url: str
) -> None:
    ollama.settings.parallel = 1
    ollama.settings.latency = 0.5
    config = admin_config(ollama, cloud, db_url, redis_url, cloud_daily_cap=4, spill_depth=10)
    async with serve(config, plugins=[TokenAuth()]) as served:
        admin = await register_user(served, admin=True)
        assert (await chat(served, "pro", model=CLOUD_MODEL)).status == 200

        status, budget = await get(served, "/api/admin/cloud-budget", admin.headers)
        day = datetime.now(ZoneInfo("Asia/Kuwait")).date().isoformat()
        assert (status, budget) == (200, {"day": day, "used": 1, "cap": 4, "percent": 25})

        holder = asyncio.ensure_future(chat(served, "basic", "holder"))
        await asyncio.sleep(0.05)  # it holds the one slot; the others wait
        tiers = ("basic", "pro", "enterprise", "enterprise")
        tasks = [holder] + [asyncio.ensure_future(chat(served, tier, tier)) for tier in tiers]
        await asyncio.sleep(0.15)
        status, upstreams = await get(served, "/api/admin/upstreams", admin.headers)
        assert status == 200
        assert upstreams["data"] == [
            {
                "name": "ollama",
                "kind": "local",
                "state": "up",
                "down_for_s": 0,
                "parallel": 1,
                "slots_in_use": 1,
                "queue_depth": 4,
                "queue_by_tier": {"basic": 1, "pro": 1, "enterprise": 2},
            },
            {"name": "cloud", "kind": "cloud", "state": "up", "cloud_budget": budget},
        ]
        assert [r.status for r in await asyncio.gather(*tasks)] == [200] * 5
        await assert_released(served)


async def test_the_admin_views_are_closed_to_everyone_else(
    serve: Any, ollama: Any, cloud: Any, db_url: str, redis_url: str
) -> None:
    async with serve(admin_config(ollama, cloud, db_url, redis_url), plugins=[TokenAuth()]) as served:
        user = await register_user(served, tier="enterprise")
        for path in ("/api/admin/cloud-budget", "/api/admin/upstreams"):
            status, body = await get(served, path)
            assert status == 401 and body["error"]["code"] == "not_authenticated"
            status, body = await get(served, path, user.headers)
            assert status == 403 and body["error"]["code"] == "admin_required"
            assert set(body["error"]) >= {"message", "type", "param", "code"}


async def test_without_the_auth_plugin_nobody_is_logged_in(
    serve: Any, ollama: Any, cloud: Any, sqlite_url: str, redis_url: str
) -> None:
    config = failover_config(ollama_url=ollama.url, cloud_url=cloud.url, database_url=sqlite_url, redis_url=redis_url)
    async with serve(config, plugins=[TokenAuth()]) as served:
        status, body = await get(served, "/api/admin/upstreams", as_tier("enterprise"))
        assert status == 401 and body["error"]["code"] == "not_authenticated"
