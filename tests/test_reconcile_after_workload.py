"""`reconcile` exits 0 after a realistic mixed workload, as deployed: one gateway with two granian workers on
MariaDB + Redis with auth_keys, tiers, credits, billing (on the fake MyFatoorah), teams and admin, driven only
through its HTTP API: a pack bought and partly refunded while its buyer's key runs into its daily limit, then
the buyer banned, a team member running into their monthly limit, a poor
account running out of credits, streams read to the end and streams cut off, an upstream failure, and admin
credit adjustments. Then `python -m edge reconcile` and `python -m edge billing reconcile`, each its own
process while the workers still serve, exit 0 and say they found nothing (and `reconcile` again once the
workers have stopped, in tests.support.deployment)."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.fakes.myfatoorah import FakeMyFatoorah
from tests.support.billing import WEBHOOK_PATH, billing_entry, checkout, fake_myfatoorah
from tests.support.billing_admin import call, paid_order
from tests.support.bodies import chat_body
from tests.support.credits import table_rows, until_settled
from tests.support.deployment import Deployed, burst, deployed
from tests.support.portal import LoggedIn, auth_plugin_entry, bearer, create_key, register_user
from tests.support.servers import clean_env, run_cli
from tests.support.teams import join

pytestmark = pytest.mark.slow

BODY = chat_body(max_tokens=16)
POISON = "this message breaks the upstream"
FAKE = ("--latency", "0.2", "--chunks", "8", "--chunk-interval", "0.05", "--poison", POISON)


async def adjust(site: Deployed, admin: LoggedIn, account_id: int, delta_milli: int) -> None:
    path = f"/api/admin/accounts/{account_id}/credits"
    status, body = await call(site.remote, "POST", path, admin, {"delta_milli": delta_milli, "reason": "workload"})
    assert status in (200, 201), body


async def stream(site: Deployed, secret: str, *, cut: bool) -> int:
    """A streamed chat: read to the end, or `cut` after its first chunk (the client goes away)."""
    body = chat_body(max_tokens=16, stream=True)
    headers = {"content-type": "application/json", **bearer(secret)}
    async with aiohttp.ClientSession() as http:
        async with http.post(site.url("/v1/chat/completions"), data=body, headers=headers) as r:
            if cut:
                await r.content.readany()
                r.close()
            else:
                text = await r.text()
                assert text.rstrip().endswith("data: [DONE]"), text[-200:]
            return r.status


def codes(answers: Sequence[tuple[int, Any, dict[str, str]]]) -> Counter[tuple[int, str]]:
    return Counter((status, "" if status == 200 else body["error"]["code"]) for status, body, _ in answers)


async def buyer_workload(site: Deployed, fake: FakeMyFatoorah, admin: LoggedIn) -> None:
    """A pack bought, a key with a daily limit run into it while the order is partly refunded, then the buyer
    banned: their key is refused from then on."""
    buyer = await register_user(site.remote, locale="en")
    order = await paid_order(site.remote, fake, buyer, "pack-5000")
    key = {"name": "limited", "scopes": ["read", "write"], "limit_milli": 400, "limit_period": "day"}
    status, made = await call(site.remote, "POST", "/api/keys", buyer, key)
    assert status == 201, made
    url, secret = site.url("/v1/chat/completions"), made["secret"]

    async def refund() -> None:
        path = f"/api/admin/orders/{order['id']}/refund"
        status, refund = await call(site.remote, "POST", path, admin, {"amount_fils": 1000, "reason": "workload"})
        assert status == 201 and refund["refund"]["status"] == "pending", refund
        fake.settle_refund(int(refund["refund"]["provider_refund_id"]))

    answers, _ = await asyncio.gather(burst(url, BODY, [secret], 40), refund())
    assert set(codes(answers)) == {(200, ""), (402, "key_limit_reached")}, codes(answers)
    await fake.webhooks_sent()
    path = f"/api/admin/users/{buyer.user_id}/ban"
    assert (await call(site.remote, "POST", path, admin, {"reason": "workload"}))[0] == 200
    assert codes(await burst(url, BODY, [secret], 6, fresh=True)) == {(401, "invalid_api_key"): 6}


async def team_workload(site: Deployed, admin: LoggedIn) -> None:
    """An Enterprise team funded by an admin, a member's team key run into their monthly limit while the
    owner's own key streams (to the end, and cut off) beside it."""
    owner = await register_user(site.remote, locale="en")
    status, _ = await call(
        site.remote, "PATCH", f"/api/admin/accounts/{owner.account_id}", admin, {"tier": "enterprise"}
    )
    assert status == 200
    await adjust(site, admin, owner.account_id, 2_000_000)
    member = await register_user(site.remote, locale="en")
    await join(site.remote, owner, member, "member")
    status, made = await call(site.remote, "POST", "/api/team/keys", member, {"name": "team"})
    assert status == 201, made
    path = f"/api/team/members/{member.user_id}"
    assert (await call(site.remote, "PATCH", path, owner, {"monthly_limit_milli": 1_000}))[0] == 200
    owner_key = await create_key(site.remote, owner)
    answers, *streams = await asyncio.gather(
        burst(site.url("/v1/chat/completions"), BODY, [made["secret"]], 40),
        *(stream(site, owner_key, cut=i % 2 == 1) for i in range(6)),
    )
    found = codes(answers)
    assert set(found) == {(200, ""), (402, "member_limit_reached")}, found
    assert streams == [200] * 6


async def poor_workload(site: Deployed, admin: LoggedIn) -> None:
    """An account with credits for a few requests: the rest refused 402, one request the upstream fails,
    and an order left unpaid."""
    poor = await register_user(site.remote, locale="en")
    await adjust(site, admin, poor.account_id, 600)
    secret = await create_key(site.remote, poor)
    poisoned = chat_body(text=POISON, max_tokens=16)
    answers, failed = await asyncio.gather(
        burst(site.url("/v1/chat/completions"), BODY, [secret], 30),
        burst(site.url("/v1/chat/completions"), poisoned, [secret], 1),
    )
    found = codes(answers)
    assert set(found) == {(200, ""), (402, "insufficient_quota")}, found
    assert failed[0][0] in (402, 502), failed
    await checkout(site.remote, poor, "pack-15000")


async def test_reconcile_exits_0_after_a_mixed_workload_on_two_workers(
    tmp_path: Path, mariadb_database: str, redis_url: str
) -> None:
    async with fake_myfatoorah() as fake:
        plugins = [
            auth_plugin_entry(),
            {"name": "tiers"},
            billing_entry(fake),
            {"name": "teams", "settings": {}},
            {"name": "admin", "settings": {}},
        ]
        async with deployed(tmp_path, mariadb_database, redis_url, plugins=plugins, fake_args=FAKE) as site:
            fake.settings.webhook_url = site.url(WEBHOOK_PATH)
            admin = await register_user(site.remote, admin=True)
            await asyncio.gather(
                buyer_workload(site, fake, admin), team_workload(site, admin), poor_workload(site, admin)
            )
            await until_settled(site.gateway, within=30)
            usage = await table_rows(site.gateway, "usage")
            assert len({u["account_id"] for u in usage}) == 3 and len(usage) > 10

            env = clean_env(RESAYIL_CONFIG=str(site.config_path))
            code, out, err = await run_cli("reconcile", env=env)
            assert code == 0, out + err
            checked = re.search(r"^reconcile: (\d+) account\(s\) checked, 0 difference\(s\)$", out, re.M)
            assert checked is not None and int(checked[1]) == 3, out  # the buyer, the team, the poor account
            code, out, err = await run_cli("billing", "reconcile", env=env)
            assert code == 0, out + err
            assert "reconcile: 2 of 2 orders checked, 0 mismatches" in out and "MISMATCH" not in out, out
