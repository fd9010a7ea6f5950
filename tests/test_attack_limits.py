"""Attacks on spend limits: a limit taken off and put back, or its period switched and switched back, in
the same period must count everything the key spent in that period, not only what it spent while limited.
(A scope row kept from before would otherwise hold a stale `spent`, and the key would spend past its limit.)"""

from __future__ import annotations

from typing import Any

import pytest

from tests import test_teams as teams
from tests.support.credits import until_settled
from tests.test_credits_key_limits import (
    HOLD,
    LEASES,
    chat,
    config,
    funded_user,
    new_key,
    patch,
    spent_by,
    until_refused,
)


@LEASES
@pytest.mark.parametrize("detour", [{"limit_milli": None}, {"limit_period": "month"}], ids=["removed", "period"])
async def test_a_limit_put_back_counts_what_the_key_spent_meanwhile(
    db_url: str, ollama: Any, serve: Any, detour: dict[str, Any], lease_requests: int
) -> None:
    async with serve(config(ollama, db_url, lease_requests=lease_requests)) as served:
        user = await funded_user(served)
        _, created = await new_key(served, user, limit_milli=HOLD * 1000, limit_period="day")
        key_id, secret = created["key"]["id"], created["secret"]
        assert (await chat(served, secret))[0] == 200  # today's scope row now exists
        await until_settled(served.gateway)
        assert (await patch(served, user, key_id, detour))[0] == 200
        for _ in range(3):
            assert (await chat(served, secret))[0] == 200
            await until_settled(served.gateway)
        spent = await spent_by(served, key_id)
        # Back to a daily limit with room for one more hold on top of everything spent today.
        body = {"limit_milli": spent + HOLD, "limit_period": "day"}
        assert (await patch(served, user, key_id, body))[0] == 200
        count, error, _ = await until_refused(served, secret)
    assert (count, error["code"]) == (1, "key_limit_reached")


async def test_a_members_limit_put_back_counts_what_they_spent_meanwhile(db_url: str, ollama: Any, serve: Any) -> None:
    async with serve(teams.config(ollama, db_url)) as served:
        t = await teams.team(served)
        status, made = await teams.call(served, "POST", "/api/team/keys", t.member, {"name": "capped"})
        assert status == 201
        path = f"/api/team/members/{t.member.user_id}"
        assert (await teams.call(served, "PATCH", path, t.owner, {"monthly_limit_milli": HOLD * 1000}))[0] == 200
        assert (await teams.chat(served, made["secret"]))[0] == 200  # this month's member scope row exists
        await until_settled(served.gateway)
        before = await spent_by(served, made["key"]["id"])
        assert (await teams.call(served, "PATCH", path, t.owner, {"monthly_limit_milli": None}))[0] == 200
        # Unlimited for a while: spend well past what one request holds (at any multiplier).
        while (spent := await spent_by(served, made["key"]["id"])) - before <= HOLD * 10:
            assert (await teams.chat(served, made["secret"]))[0] == 200
            await until_settled(served.gateway)
        # The limit put back is exactly what the member spent this month: nothing is left.
        assert (await teams.call(served, "PATCH", path, t.owner, {"monthly_limit_milli": spent}))[0] == 200
        status, body, _ = await teams.chat(served, made["secret"])
    assert (status, body["error"]["code"]) == (402, "member_limit_reached")
