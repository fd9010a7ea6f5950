"""The proof for a team member's monthly limit, as deployed: one gateway with two granian workers on MariaDB +
Redis, everything set up through the workers' own API (register, invite, accept, team keys, the owner's
PATCH of the limit). 200 concurrent requests spread over the member's two team keys, whose one monthly limit
admits exactly 10 worst-case holds, while the owner's own key runs beside them: exactly 10 of the member's
are served, the rest refused 402 `member_limit_reached` with the limit, the period, its reset time and
`x-should-retry: false`; the member's spend never passes the limit, the scope row agrees with the usage rows,
`GET /v1/account` shows the limit and what is left; a raised limit, and then a lowered one, apply to the
next request on both workers, and `reconcile` finds nothing."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from plugins.credits.tables import scope_holds, spend_scopes
from tests.support.bodies import chat_body
from tests.support.credits import table_rows, until_settled
from tests.support.deployment import burst, deployed
from tests.support.portal import auth_plugin_entry, bearer, create_key, register_user
from tests.support.teams import call, join

pytestmark = pytest.mark.slow

REQUESTS = 200
OWNER_REQUESTS = 20
HOLDS = 10
BODY = chat_body(max_tokens=10)
# Enterprise may spill over to the model's cloud fallback, billed at 2x: the worst case is held at 2x.
HOLD = (len(BODY) + 10) * 2
FUNDS = 10**9
KUWAIT = timedelta(hours=3)  # the credits plugin's timezone, Asia/Kuwait: no daylight saving time


def this_month() -> tuple[date, str]:
    """The first day of this month in Kuwait, and when the next one starts (UTC, as the API writes it)."""
    today = (datetime.now(UTC).replace(tzinfo=None) + KUWAIT).date()
    first = today.replace(day=1)
    following = (first + timedelta(days=32)).replace(day=1)
    return first, (datetime.combine(following, datetime.min.time()) - KUWAIT).isoformat() + "Z"


async def v1_account(site: Any, secret: str) -> dict[str, Any]:
    async with site.remote.request("GET", "/v1/account", headers=bearer(secret)) as r:
        assert r.status == 200
        found: dict[str, Any] = await r.json()
    return found


# With leases the owner's unlimited key takes its credits from a worker's lease while the member's keys hold
# against their limit in the database: both ways on one account at once.
@pytest.mark.parametrize("lease_requests", [0, 32], ids=["holds", "leases"])
async def test_200_concurrent_requests_on_two_workers_never_spend_past_a_members_monthly_limit(
    tmp_path: Path, mariadb_database: str, redis_url: str, lease_requests: int
) -> None:
    limit = HOLD * HOLDS
    plugins = [auth_plugin_entry(), {"name": "teams", "settings": {}}]
    async with deployed(
        tmp_path, mariadb_database, redis_url, plugins=plugins, lease_requests=lease_requests, gated=True
    ) as site:
        remote, gateway = site.remote, site.gateway
        owner = await register_user(remote, tier="enterprise", locale="en")
        team = owner.account_id
        await gateway.plugin("credits").grant(account_id=team, amount_milli=FUNDS, kind="grant", reference="seed")
        member = await register_user(remote, locale="en")
        await join(remote, owner, member, "member")
        made = [await call(remote, "POST", "/api/team/keys", member, {"name": f"key {i}"}) for i in range(2)]
        assert [status for status, _ in made] == [201, 201], made
        member_keys = [body["secret"] for _, body in made]
        owner_key = await create_key(remote, owner)
        path = f"/api/team/members/{member.user_id}"
        status, patched = await call(remote, "PATCH", path, owner, {"monthly_limit_milli": limit})
        assert (status, patched["monthly_limit_milli"]) == (200, limit)

        url = site.url("/v1/chat/completions")
        # The members' refusals come back while every served request (theirs and the owner's) waits at the
        # fake's gate, so no settlement frees room during the burst.
        answers, owners, _ = await asyncio.gather(
            burst(url, BODY, member_keys, REQUESTS, gate=site.gate),
            burst(url, BODY, [owner_key], OWNER_REQUESTS),
            site.gate.open_after(REQUESTS - HOLDS),
        )
        await until_settled(gateway, team, within=30)
        statuses = [status for status, _, _ in answers]
        assert set(statuses) <= {200, 402} and statuses.count(200) == HOLDS, statuses
        assert [status for status, _, _ in owners] == [200] * OWNER_REQUESTS  # the owner's key has no limit
        first, resets_at = this_month()
        for status, body, headers in answers:
            if status == 402:
                error = body["error"]
                assert (error["code"], error["type"]) == ("member_limit_reached", "insufficient_quota"), body
                assert (error["limit"], error["period"], error["resets_at"]) == (limit, "month", resets_at)
                assert headers["x-should-retry"] == "false"

        usage = await table_rows(gateway, "usage", account_id=team)
        mine = [u for u in usage if u["user_id"] == member.user_id]
        ids = {body["key"]["id"] for _, body in made}
        assert len(mine) == HOLDS and {u["key_id"] for u in mine} <= ids
        assert len(usage) == HOLDS + OWNER_REQUESTS
        spent = sum(u["cost_milli"] for u in mine)
        async with gateway.database.connect() as conn:
            scope = (await conn.execute(sa.select(spend_scopes))).one()
            assert (await conn.execute(sa.select(scope_holds))).all() == []
        assert (scope.kind, scope.scope_id, scope.period, scope.period_start) == (
            "member",
            member.user_id,
            "month",
            first,
        )
        assert scope.spent_milli == spent <= limit and scope.reserved_milli == 0
        state = await gateway.plugin("credits").balance(team)
        assert state["reserved_milli"] == 0 and state["balance_milli"] == FUNDS - sum(u["cost_milli"] for u in usage)

        # Both of the member's keys show the one limit and what is left of it; the owner's key has none.
        for secret in member_keys:
            shown = await v1_account(site, secret)
            assert (shown["id"], shown["key"]["limit"]) == (team, None)
            assert shown["member_limit"] == {
                "limit_milli": limit,
                "period": "month",
                "spent_milli": spent,
                "held_milli": 0,
                "remaining_milli": limit - spent,
                "period_start": first.isoformat(),
                "resets_at": resets_at,
            }
        assert (await v1_account(site, owner_key))["member_limit"] is None

        # The limit is read on every request: raised, both workers serve at once; lowered below what is
        # spent, both refuse at once. A connection each, so both workers answer some.
        status, _ = await call(remote, "PATCH", path, owner, {"monthly_limit_milli": limit * 10})
        assert status == 200
        again = await burst(url, BODY, member_keys, 8, fresh=True)
        assert [status for status, _, _ in again] == [200] * 8
        await until_settled(gateway, team, within=30)
        status, _ = await call(remote, "PATCH", path, owner, {"monthly_limit_milli": spent})
        assert status == 200
        lowered = await burst(url, BODY, member_keys, 8, fresh=True)
        assert {(status, body["error"]["code"]) for status, body, _ in lowered} == {(402, "member_limit_reached")}
        assert sum(u["cost_milli"] for u in await table_rows(gateway, "usage", user_id=member.user_id)) > spent
