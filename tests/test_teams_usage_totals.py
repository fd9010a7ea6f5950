"""The team's month totals on `GET /api/team/usage`, on SQLite and MariaDB: real /v1 requests by two members'
team keys, settled through the credits plugin, and the totals (this month and last, from credits' monthly
roll-up) equal the team account's usage rows. The owner and billing see them; an admin, a member, another
team's admin and a user in no team do not; another team's owner sees only their own team's."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from plugins.credits import rollups
from plugins.credits.tables import usage
from tests.support.credits import credits_config, table_rows, until_settled
from tests.support.portal import LoggedIn, auth_plugin_entry, register_user
from tests.test_teams import Team, call, chat, team
from tests.test_teams_keys import error, own_key, team_key

SUMS = ("requests", "prompt_tokens", "completion_tokens", "charged_milli")


def config(ollama: Any, db_url: str, **credits: Any) -> dict[str, Any]:
    plugins = [auth_plugin_entry(), {"name": "teams", "settings": {}}]
    return credits_config(ollama_url=ollama.url, database_url=db_url, extra_plugins=plugins, **credits)


def month_of(day: date) -> date:
    return day.replace(day=1)


def summed(rows: list[dict[str, Any]], month: date) -> dict[str, Any]:
    """What the totals of `month` must say: the sums of the usage rows whose local day is in it."""
    mine = [r for r in rows if month_of(r["day"]) == month]
    return {
        "month": month.isoformat(),
        "requests": len(mine),
        "prompt_tokens": sum(r["prompt_tokens"] for r in mine),
        "completion_tokens": sum(r["completion_tokens"] for r in mine),
        "charged_milli": sum(r["cost_milli"] for r in mine),
    }


async def spend(served: Any, secret: str, times: int) -> None:
    for _ in range(times):
        status, body, _ = await chat(served, secret)
        assert status == 200, body


async def totals(served: Any, user: LoggedIn) -> dict[str, Any]:
    status, body = await call(served, "GET", "/api/team/usage", user)
    assert status == 200, body
    assert set(body["totals"]) == {"this_month", "last_month"}
    return dict(body["totals"])


async def expected(served: Any, t: Team) -> dict[str, Any]:
    rows = await table_rows(served.gateway, "usage", account_id=t.owner.account_id)
    this_month = month_of(max(r["day"] for r in rows))
    last_month = month_of(this_month - timedelta(days=1))
    return {"this_month": summed(rows, this_month), "last_month": summed(rows, last_month)}


@pytest.mark.parametrize(
    "leases", [{"lease_requests": 0}, {"lease_requests": 16, "lease_idle_ms": 50}], ids=["holds", "leases"]
)
async def test_the_owner_and_billing_see_the_teams_month_totals_of_its_usage_rows(
    db_url: str, ollama: Any, serve: Any, leases: dict[str, int]
) -> None:
    async with serve(config(ollama, db_url, **leases)) as served:
        t, other = await team(served), await team(served)
        await spend(served, (await team_key(served, t.admin))["secret"], 2)
        await spend(served, (await team_key(served, t.member))["secret"], 3)
        await spend(served, (await team_key(served, other.member))["secret"], 1)
        own = await own_key(served, t.member)  # the member's own account: not the team's spend
        await served.gateway.plugin("credits").grant(
            account_id=t.member.account_id, amount_milli=10**9, kind="grant", reference=f"own-{t.member.account_id}"
        )
        await spend(served, own["secret"], 1)
        await until_settled(served.gateway)

        want = await expected(served, t)
        assert want["this_month"]["requests"] == 5 and want["this_month"]["charged_milli"] > 0
        assert want["last_month"]["requests"] == 0
        for user in (t.owner, t.billing):
            assert await totals(served, user) == want
        # Another team's owner sees their own team's totals only: one request.
        theirs = await totals(served, other.owner)
        assert theirs == await expected(served, other) and theirs["this_month"]["requests"] == 1
        for user in (t.admin, t.member, other.admin, other.member):
            assert error(await call(served, "GET", "/api/team/usage", user)) == (403, "team_forbidden")
        outsider = await register_user(served)
        assert error(await call(served, "GET", "/api/team/usage", outsider)) == (403, "team_required")
        # Per member there is no roll-up: the totals are the account's, and name nobody.
        assert all(set(month) == {"month", *SUMS} for month in want.values())


async def test_last_months_usage_rows_are_last_months_totals(db_url: str, ollama: Any, serve: Any) -> None:
    """Usage rows of last month (the admin's, moved there) count in `last_month` once the roll-ups are rebuilt
    from the usage rows as `python -m edge credits rollup-rebuild` does; this month keeps the rest."""
    async with serve(config(ollama, db_url, lease_requests=0)) as served:
        t = await team(served)
        admin_key = await team_key(served, t.admin)
        await spend(served, admin_key["secret"], 2)
        await spend(served, (await team_key(served, t.member))["secret"], 1)
        await until_settled(served.gateway)
        before = await expected(served, t)
        last_day = month_of(date.fromisoformat(before["this_month"]["month"])) - timedelta(days=1)
        async with served.gateway.database.begin() as conn:
            moved = await conn.execute(
                sa.update(usage).where(usage.c.key_id == admin_key["key"]["id"]).values(day=last_day)
            )
            assert moved.rowcount == 2
            await rollups.rebuild(conn)
            assert await rollups.differences(conn) == []

        now = await expected(served, t)
        assert (now["this_month"]["requests"], now["last_month"]["requests"]) == (1, 2)
        assert now["last_month"]["month"] == month_of(last_day).isoformat()
        for user in (t.owner, t.billing):
            assert await totals(served, user) == now
        assert error(await call(served, "GET", "/api/team/usage", t.member)) == (403, "team_forbidden")
