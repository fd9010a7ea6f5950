"""A new user registers through an invitation's link straight into the team, with the invited role, on
SQLite and MariaDB: the hostile cases (expired, revoked, used, someone else's, garbage, a phone typed in
another form, one token raced by several registrations) and what a refused registration leaves (nothing)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from edge.errors import GatewayError
from edge.services import CREDITS, TEAMS, TeamJoin
from tests.support.bodies import chat_body
from tests.support.clock import ManualClock
from tests.support.credits import table_rows, until_settled
from tests.support.portal import auth_config, bearer, register_user, unique_email, unique_phone
from tests.support.teams import FUNDS, call, code, invite, register, team_audit, teams_config


async def _enterprise(served: Any) -> Any:
    owner = await register_user(served, tier="enterprise", locale="en")
    await served.gateway.service(CREDITS).grant(
        account_id=owner.account_id, amount_milli=FUNDS, kind="grant", idempotency_key=f"seed-{owner.account_id}"
    )
    return owner


async def test_a_new_user_registers_through_the_link_into_the_team_with_the_invited_role(
    db_url: str, ollama: Any, serve: Any
) -> None:
    async with serve(teams_config(ollama, db_url)) as served:
        owner = await _enterprise(served)
        email = unique_email()
        invitation = await invite(served, owner, role="admin", email=email.upper())
        assert invitation["email"] == email  # kept in the form the user's email is stored in
        status, body, newcomer = await register(served, invitation=invitation["token"], email=email)
        assert status == 201 and newcomer is not None, body
        assert body["team"] == {"account_id": owner.account_id, "role": "admin"}
        # In the team at once, no accept step; the invited role, no limit.
        assert await call(served, "GET", "/api/team", newcomer) == (
            200,
            {"account_id": owner.account_id, "role": "admin", "monthly_limit_milli": None, "ownership_offered": False},
        )
        status, members = await call(served, "GET", "/api/team/members", owner)
        row = next(m for m in members["data"] if m["user_id"] == newcomer.user_id)
        assert (row["role"], row["email"], row["phone"], row["name"]) == (
            "admin",
            email,
            newcomer.phone,
            "Invited Person",
        )
        # An admin of the team: they manage it (the owner's name is read through the accounts service too).
        status, seen = await call(served, "GET", "/api/team/members", newcomer)
        assert status == 200 and {m["user_id"] for m in seen["data"]} == {owner.user_id, newcomer.user_id}
        assert next(m for m in seen["data"] if m["user_id"] == owner.user_id)["email"] == owner.email
        # Their own account is never the team's: their key on the team's account is a team key, billed there.
        assert newcomer.account_id != owner.account_id
        status, key = await call(served, "POST", "/api/team/keys", newcomer, {"name": "ci"})
        assert status == 201, key
        headers = {"content-type": "application/json", **bearer(key["secret"])}
        async with served.request("POST", "/v1/chat/completions", data=chat_body(), headers=headers) as r:
            assert r.status == 200, await r.text()
        await until_settled(served.gateway, owner.account_id)
        used = await table_rows(served.gateway, "usage", key_id=key["key"]["id"])
        assert [(u["account_id"], u["user_id"]) for u in used] == [(owner.account_id, newcomer.user_id)]
        # The link is used up.
        accept = f"/api/team/invitations/{invitation['token']}/accept"
        assert code(await call(served, "POST", accept, newcomer)) == (404, "invitation_not_found")
        accepted = [r for r in await team_audit(served) if r["action"] == "teams.invitation_accepted"]
        assert [(r["actor_user_id"], r["details"]["registered"], r["details"]["role"]) for r in accepted] == [
            (newcomer.user_id, True, "admin")
        ]


async def test_a_phone_typed_in_another_form_invites_the_user_who_registers_with_it(
    db_url: str, ollama: Any, serve: Any
) -> None:
    async with serve(teams_config(ollama, db_url)) as served:
        owner = await _enterprise(served)
        phone = unique_phone()  # +9659xxxxxxx
        local = phone[4:]
        for typed in (f"00965 {local[:4]} {local[4:]}", local, f"+965 ٩{local[1:]}", f"+965-0{local}"):
            invitation = await invite(served, owner, phone=typed)
            assert invitation["phone"] == phone, typed
        for wrong in ("+965 9123", "12", "phone", "+1 (555) 0100 ext. 7", 96551234567):
            status, body = await call(
                served, "POST", "/api/team/invitations", owner, {"phone": wrong, "role": "member"}
            )
            assert (status, body["error"]["code"]) == (422, "phone_invalid"), wrong
        status, body, newcomer = await register(
            served, invitation=invitation["token"], phone=f"+965 {local[:4]}-{local[4:]}"
        )
        assert status == 201 and newcomer is not None and newcomer.phone == phone, body
        assert body["team"] == {"account_id": owner.account_id, "role": "member"}


async def test_a_refused_invitation_registers_nobody(db_url: str, ollama: Any, serve: Any) -> None:
    """Refuse, never ignore: a registration whose invitation cannot be used is answered with the reason and
    creates no user and no account (the same email then registers without it), so nobody lands by surprise
    in an account of their own when they meant to join a team."""
    clock = ManualClock()
    async with serve(teams_config(ollama, db_url, invitation_seconds=3600), clock=clock) as served:
        owner = await _enterprise(served)
        late, revoked, mine, other, phoned = (unique_email() for _ in range(5))
        expiring = await invite(served, owner, email=late)
        clock.advance(3601)
        refused = await register(served, invitation=expiring["token"], email=late)
        assert code(refused[:2]) == (410, "invitation_expired")
        cancelled = await invite(served, owner, email=revoked)
        assert (await call(served, "DELETE", f"/api/team/invitations/{cancelled['id']}", owner))[0] == 200
        assert code((await register(served, invitation=cancelled["token"], email=revoked))[:2]) == (
            404,
            "invitation_not_found",
        )
        for_mine = await invite(served, owner, email=mine)
        assert code((await register(served, invitation=for_mine["token"], email=other))[:2]) == (
            403,
            "invitation_not_yours",
        )
        by_phone = await invite(served, owner, phone=unique_phone())
        assert code((await register(served, invitation=by_phone["token"], email=phoned))[:2]) == (
            403,
            "invitation_not_yours",
        )
        for garbage in ("rti_" + "A" * 43, "rti_short", "not a token", "rti_" + "A" * 43 + "\n"):
            assert code((await register(served, invitation=garbage))[:2]) == (404, "invitation_not_found"), garbage
        for malformed in (12345, ["rti_"], "x" * 101, ""):
            status, body, _ = await register(served, invitation=malformed)
            assert (status, body["error"]["fields"]["invitation"]["code"]) == (422, "invitation_invalid"), malformed
        # Nothing was created: every one of those emails registers now (without an invitation) ...
        for email in (late, revoked, other, phoned):
            status, body, _ = await register(served, email=email)
            assert status == 201 and "team" not in body, body
        # ... and the invitation refused to someone else is still open for its own addressee, once.
        status, body, joined = await register(served, invitation=for_mine["token"], email=mine)
        assert status == 201 and body["team"]["account_id"] == owner.account_id, body
        status, members = await call(served, "GET", "/api/team/members", owner)
        assert sorted(m["user_id"] for m in members["data"]) == sorted([owner.user_id, joined.user_id])  # type: ignore[union-attr]
        accepted = [r for r in await team_audit(served) if r["action"] == "teams.invitation_accepted"]
        assert [r["target"] for r in accepted] == [f"invitation:{for_mine['id']}"]


async def test_one_token_raced_by_several_registrations_makes_one_member(db_url: str, ollama: Any, serve: Any) -> None:
    async with serve(teams_config(ollama, db_url)) as served:
        owner = await _enterprise(served)
        email = unique_email()
        invitation = await invite(served, owner, email=email)
        answers = await asyncio.gather(
            *(register(served, invitation=invitation["token"], email=email) for _ in range(6))
        )
        won = [body for status, body, _ in answers if status == 201]
        lost = [code((status, body)) for status, body, _ in answers if status != 201]
        assert len(won) == 1 and won[0]["team"] == {"account_id": owner.account_id, "role": "member"}, answers
        assert set(lost) <= {(422, "invalid_request"), (422, "email_taken"), (404, "invitation_not_found")}, lost
        status, members = await call(served, "GET", "/api/team/members", owner)
        assert status == 200 and sorted(m["user_id"] for m in members["data"]) == sorted(
            [owner.user_id, won[0]["user"]["id"]]
        )
        # (The losers meet the email's uniqueness first; the token's own guard is raced just below.)


async def test_of_two_transactions_claiming_one_token_the_second_waits_and_is_refused(
    db_url: str, ollama: Any, serve: Any
) -> None:
    """The TEAMS service as auth_keys calls it, in two registrations' transactions at once: the first holds
    the invitation's row until it commits; the second waits for it, then finds the token used (404)."""
    async with serve(teams_config(ollama, db_url)) as served:
        owner = await _enterprise(served)
        email = unique_email()
        invitation = await invite(served, owner, email=email)
        users = [(await register(served))[2] for _ in range(2)]
        teams, database = served.gateway.service(TEAMS), served.gateway.database
        claimed, release = asyncio.Event(), asyncio.Event()

        async def claim(user: Any, *, hold: bool) -> TeamJoin:
            async with database.begin() as conn:
                joined = await teams.join_registering(
                    conn, token=invitation["token"], user_id=user.user_id, email=email, phone=user.phone, ip=None
                )
                if hold:
                    claimed.set()
                    await release.wait()
            return joined

        first = asyncio.create_task(claim(users[0], hold=True))
        await claimed.wait()
        second = asyncio.create_task(claim(users[1], hold=False))
        await asyncio.sleep(0.3)
        assert not second.done()  # waiting for the first transaction's lock
        release.set()
        assert (await first).account_id == owner.account_id
        with pytest.raises(GatewayError) as refused:
            await second
        assert (refused.value.status, refused.value.code) == (404, "invitation_not_found")
        status, members = await call(served, "GET", "/api/team/members", owner)
        assert status == 200 and sorted(m["user_id"] for m in members["data"]) == sorted(
            [owner.user_id, users[0].user_id]
        )
        actions = [r["action"] for r in await team_audit(served)]
        assert actions.count("teams.invitation_accepted") == 1 and actions.count("teams.member_added") == 1


async def test_without_the_teams_plugin_an_invitation_is_refused(db_url: str, ollama: Any, serve: Any) -> None:
    async with serve(auth_config(ollama, db_url)) as served:
        status, body, _ = await register(served, invitation="rti_" + "A" * 43)
        assert (status, body["error"]["fields"]["invitation"]["code"]) == (422, "invitation_not_found")
        status, body, _ = await register(served)
        assert status == 201 and "team" not in body
