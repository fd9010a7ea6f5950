"""`GET /v1/account` with a team key, on SQLite and MariaDB: what a key's holder sees of the team's account
follows the role policy (plugins/teams/README.md). A member (and an admin: neither has `usage.read` nor
`billing`) sees their own month usage on the team's account and their monthly limit with what is left,
never the team's balance or the team's usage; the owner sees the account's; a member's key on their own
account shows that account as before."""

from __future__ import annotations

from typing import Any

from tests.support.credits import until_settled
from tests.support.portal import bearer
from tests.test_teams import FUNDS, call, chat, config, team
from tests.test_teams_keys import own_key, team_key

LIMIT = 5_000_000


async def account(served: Any, secret: str) -> dict[str, Any]:
    async with served.request("GET", "/v1/account", headers=bearer(secret)) as r:
        body = await r.json()
        assert r.status == 200, body
    return body


async def spend(served: Any, secret: str, times: int) -> None:
    for _ in range(times):
        status, body, _ = await chat(served, secret)
        assert status == 200, body


async def test_a_member_sees_their_own_usage_and_limit_never_the_teams_balance_or_usage(
    db_url: str, ollama: Any, serve: Any
) -> None:
    async with serve(config(ollama, db_url)) as served:
        t = await team(served)
        other = await team(served)
        path = f"/api/team/members/{t.member.user_id}"
        status, body = await call(served, "PATCH", path, t.owner, {"monthly_limit_milli": LIMIT})
        assert status == 200, body
        member, admin = await team_key(served, t.member), await team_key(served, t.admin)
        owner = await own_key(served, t.owner)
        mine = await own_key(served, t.member)
        await served.gateway.plugin("credits").grant(
            account_id=t.member.account_id, amount_milli=10**9, kind="grant", reference=f"own-{t.member.account_id}"
        )
        await spend(served, member["secret"], 2)
        await spend(served, admin["secret"], 1)
        await spend(served, mine["secret"], 1)
        await spend(served, (await team_key(served, other.member))["secret"], 1)
        await until_settled(served.gateway)

        whole = await account(served, owner["secret"])
        assert whole["id"] == t.owner.account_id and whole["usage"]["requests"] == 3
        assert "user_id" not in whole["usage"] and whole["member_limit"] is None
        team_cost = whole["usage"]["cost_milli"]
        assert whole["balance"]["balance_milli"] == FUNDS - team_cost > 0

        seen = await account(served, member["secret"])
        assert seen["id"] == t.owner.account_id and seen["tier"] == "enterprise"
        assert seen["balance"] is None
        usage = seen["usage"]
        assert (usage["user_id"], usage["account_id"], usage["requests"]) == (t.member.user_id, t.owner.account_id, 2)
        assert 0 < usage["cost_milli"] < team_cost and usage["since"] == whole["usage"]["since"]
        limit = seen["member_limit"]
        assert (limit["limit_milli"], limit["spent_milli"], limit["held_milli"]) == (LIMIT, usage["cost_milli"], 0)
        assert limit["remaining_milli"] == LIMIT - usage["cost_milli"] and limit["resets_at"].endswith("Z")
        # Nothing of the team's totals in the answer, whatever field it would hide in.
        assert str(team_cost) not in str(seen) and str(FUNDS - team_cost) not in str(seen)

        by_admin = await account(served, admin["secret"])
        assert by_admin["balance"] is None and by_admin["member_limit"] is None
        assert (by_admin["usage"]["user_id"], by_admin["usage"]["requests"]) == (t.admin.user_id, 1)
        assert by_admin["usage"]["cost_milli"] == team_cost - usage["cost_milli"]

        # The member's key on their own account: that account, all of it, as before.
        home = await account(served, mine["secret"])
        assert home["id"] == t.member.account_id and home["usage"]["requests"] == 1
        assert "user_id" not in home["usage"] and home["balance"]["account_id"] == t.member.account_id
        assert home["member_limit"] is None


async def test_after_a_transfer_the_new_owners_team_key_sees_the_whole_account(
    db_url: str, ollama: Any, serve: Any
) -> None:
    async with serve(config(ollama, db_url)) as served:
        t = await team(served)
        key = await team_key(served, t.member)
        await spend(served, key["secret"], 1)
        await until_settled(served.gateway)
        assert (await account(served, key["secret"]))["balance"] is None
        status, body = await call(served, "POST", "/api/team/transfer", t.owner, {"user_id": t.member.user_id})
        assert status == 202, body
        status, body = await call(served, "POST", "/api/team/transfer", t.member, {"accept": True})
        assert status == 200, body
        seen = await account(served, key["secret"])
        assert seen["balance"]["account_id"] == t.owner.account_id and "user_id" not in seen["usage"]
        assert seen["usage"]["requests"] == 1
