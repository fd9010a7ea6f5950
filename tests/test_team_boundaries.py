"""Team boundaries the permission matrix cannot see from one call: a team key follows its member's role (a
member moved to `billing`, which may hold no keys, stops spending the team's credits at once and starts
again when moved back). SQLite and MariaDB."""

from __future__ import annotations

from typing import Any

from tests.test_teams import call, chat, config, team


async def test_a_team_key_stops_while_its_member_is_in_the_billing_role(db_url: str, ollama: Any, serve: Any) -> None:
    async with serve(config(ollama, db_url)) as served:
        t = await team(served)
        status, made = await call(served, "POST", "/api/team/keys", t.member, {"name": "work"})
        assert status == 201, made
        assert (await chat(served, made["secret"]))[0] == 200
        path = f"/api/team/members/{t.member.user_id}"
        status, _ = await call(served, "PATCH", path, t.admin, {"role": "billing"})
        assert status == 200
        status, body, _ = await chat(served, made["secret"])
        assert (status, body["error"]["code"]) == (403, "team_forbidden"), body
        status, refused = await call(served, "POST", "/api/team/keys", t.member, {"name": "another"})
        assert (status, refused["error"]["code"]) == (403, "team_forbidden")
        status, _ = await call(served, "PATCH", path, t.admin, {"role": "member"})
        assert status == 200
        status, body, _ = await chat(served, made["secret"])
        assert status == 200, body
