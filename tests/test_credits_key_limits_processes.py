"""The proof for key limits, as deployed: one gateway with two granian workers on MariaDB + Redis, 200
concurrent requests with one API key whose daily limit admits exactly 10 worst-case holds (the account's
balance pays for far more). Exactly 10 are served, the key's spend never passes its limit, its scope row
agrees with its usage rows, `reconcile` finds nothing; a raised limit then reaches both workers at once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import sqlalchemy as sa

from edge.gateway import Gateway
from plugins.credits.tables import scope_holds, spend_scopes
from tests.support.bodies import chat_body
from tests.support.credits import table_rows, until_settled
from tests.support.deployment import burst, deployed
from tests.support.portal import auth_plugin_entry, unique_email, unique_phone

pytestmark = pytest.mark.slow

REQUESTS = 200
HOLDS = 10


async def limited_key(gateway: Gateway, limit_milli: int) -> tuple[int, int, str]:
    """(account, key id, secret) of a new basic user's key with a daily limit, the account well funded."""
    auth = gateway.plugin("auth_keys")
    _, account = await auth.users.create(
        name="Limited", email=unique_email(), phone=unique_phone(), password_hash="x", locale="en", tier="basic"
    )
    key, secret = await auth.keys.create(
        account_id=account,
        user_id=None,
        name="limited",
        scopes=("read", "write"),
        expires_at=None,
        limit=(limit_milli, "day"),
    )
    await gateway.plugin("credits").grant(account_id=account, amount_milli=10**9, kind="grant", reference="seed")
    return account, int(key["id"]), secret


@pytest.mark.parametrize("lease_requests", [0, 32], ids=["holds", "leases"])
async def test_200_concurrent_requests_on_two_workers_never_spend_past_a_keys_limit(
    tmp_path: Path, mariadb_database: str, redis_url: str, lease_requests: int
) -> None:
    body = chat_body()
    hold = len(body) + 64  # basic: local only, 1x, the model's default cap of 64
    limit = hold * HOLDS
    plugins = [auth_plugin_entry()]
    async with deployed(
        tmp_path, mariadb_database, redis_url, plugins=plugins, lease_requests=lease_requests, gated=True
    ) as site:
        gateway = site.gateway
        account, key_id, secret = await limited_key(gateway, limit)
        url = site.url("/v1/chat/completions")
        answers, _ = await asyncio.gather(
            burst(url, body, [secret], REQUESTS, gate=site.gate), site.gate.open_after(REQUESTS - HOLDS)
        )
        await until_settled(gateway, account, within=30)
        statuses = [status for status, _, _ in answers]
        assert set(statuses) <= {200, 402} and statuses.count(200) == HOLDS, statuses
        assert {a["error"]["code"] for s, a, _ in answers if s == 402} == {"key_limit_reached"}
        usage = await table_rows(gateway, "usage", account_id=account)
        spent = sum(u["cost_milli"] for u in usage)
        assert len(usage) == HOLDS and all(u["key_id"] == key_id for u in usage)
        async with gateway.database.connect() as conn:
            scope = (await conn.execute(sa.select(spend_scopes))).one()
            assert (await conn.execute(sa.select(scope_holds))).all() == []
        assert (scope.kind, scope.scope_id, scope.period) == ("key", key_id, "day")
        assert scope.spent_milli == spent <= limit and scope.reserved_milli == 0
        state = await gateway.plugin("credits").balance(account)
        assert state["reserved_milli"] == 0 and state["balance_milli"] == 10**9 - spent

        # A raised limit reaches both workers at once (the key cache is invalidated through Redis).
        await gateway.plugin("auth_keys").keys.set_limit(
            key_id=key_id, account_id=account, limit_milli=limit * 10, limit_period="day"
        )
        await gateway.plugin("auth_keys").accounts.invalidate_key(key_id)
        await asyncio.sleep(0.2)
        again = await burst(url, body, [secret], 8, fresh=True)  # a connection each: both workers answer
        assert [status for status, _, _ in again] == [200] * 8
        await until_settled(gateway, account, within=30)
