"""Every team action leaves its audit row (who, what, to whom, details, IP), read back as an admin through
`GET /api/admin/audit`, on SQLite and MariaDB; a refused or rolled-back action leaves none, and a change
to the same value is no change."""

from __future__ import annotations

from typing import Any

from tests.support.portal import LoggedIn, register_user, unique_email
from tests.support.teams import call, code, invite, teams_config


async def audit(served: Any, admin: LoggedIn, query: str = "action=teams") -> list[tuple[str, int, str]]:
    """(action, actor, target) of the matching rows, oldest first."""
    status, body = await call(served, "GET", f"/api/admin/audit?{query}", admin)
    assert status == 200, body
    return [(e["action"], e["actor_user_id"], e["target"]) for e in reversed(body["entries"])]


async def entries(served: Any, admin: LoggedIn) -> list[dict[str, Any]]:
    status, body = await call(served, "GET", "/api/admin/audit?action=teams&limit=100", admin)
    assert status == 200, body
    return list(reversed(body["entries"]))


async def test_every_team_action_is_audited_with_who_what_whom_and_where(db_url: str, ollama: Any, serve: Any) -> None:
    async with serve(teams_config(ollama, db_url, admin=True)) as served:
        admin = await register_user(served, admin=True)
        owner = await register_user(served, tier="enterprise")
        member, extra = await register_user(served), await register_user(served)
        assert (await call(served, "GET", "/api/team", owner))[0] == 200  # founds the team
        account = owner.account_id
        nobody = await invite(served, owner, email=unique_email())
        assert (await call(served, "DELETE", f"/api/team/invitations/{nobody['id']}", owner))[0] == 200
        joining = await invite(served, owner, phone=member.phone)
        assert (await call(served, "POST", f"/api/team/invitations/{joining['token']}/accept", member))[0] == 200
        later = await invite(served, owner, email=extra.email)
        assert (await call(served, "POST", f"/api/team/invitations/{later['token']}/accept", extra))[0] == 200
        status, extras_key = await call(served, "POST", "/api/team/keys", extra, {"name": "extra"})
        assert status == 201, extras_key
        change = {"role": "admin", "monthly_limit_milli": 5000}
        assert (await call(served, "PATCH", f"/api/team/members/{member.user_id}", owner, change))[0] == 200
        assert (await call(served, "POST", "/api/team/transfer", owner, {"user_id": member.user_id}))[0] == 202
        assert (await call(served, "POST", "/api/team/transfer", member, {"accept": True}))[0] == 200
        # The old owner is the account's own user: nobody removes them; the new owner removes the other.
        assert code(await call(served, "DELETE", f"/api/team/members/{owner.user_id}", member))[0] == 403
        status, removed = await call(served, "DELETE", f"/api/team/members/{extra.user_id}", member)
        assert status == 200 and removed["keys_revoked"] == [extras_key["key"]["id"]]

        o, m, x = f"user:{owner.user_id}", f"user:{member.user_id}", f"user:{extra.user_id}"
        assert await audit(served, admin) == [
            ("teams.team_founded", owner.user_id, o),
            ("teams.invitation_created", owner.user_id, f"invitation:{nobody['id']}"),
            ("teams.invitation_revoked", owner.user_id, f"invitation:{nobody['id']}"),
            ("teams.invitation_created", owner.user_id, f"invitation:{joining['id']}"),
            ("teams.invitation_accepted", member.user_id, f"invitation:{joining['id']}"),
            ("teams.member_added", member.user_id, m),
            ("teams.invitation_created", owner.user_id, f"invitation:{later['id']}"),
            ("teams.invitation_accepted", extra.user_id, f"invitation:{later['id']}"),
            ("teams.member_added", extra.user_id, x),
            ("teams.role_changed", owner.user_id, m),
            ("teams.limit_changed", owner.user_id, m),
            ("teams.ownership_offered", owner.user_id, m),
            ("teams.ownership_accepted", member.user_id, m),
            ("teams.member_removed", member.user_id, x),
        ]
        rows = await entries(served, admin)
        assert {e["ip"] for e in rows} == {"127.0.0.1"} and {e["details"]["account_id"] for e in rows} == {account}
        # The member's own rows (the first invitation is the one sent to them by phone).
        details = {e["action"]: e["details"] for e in rows if e["target"] in (m, f"invitation:{joining['id']}")}
        details["teams.member_removed"] = next(e["details"] for e in rows if e["action"] == "teams.member_removed")
        assert details["teams.invitation_created"] | {"expires_at": None} == {
            "account_id": account,
            "role": "member",
            "phone": member.phone,
            "expires_at": None,
        }
        assert details["teams.invitation_accepted"] == {
            "account_id": account,
            "user_id": member.user_id,
            "role": "member",
            "registered": False,
        }
        assert details["teams.member_added"] == {
            "account_id": account,
            "role": "member",
            "invitation_id": joining["id"],
        }
        assert details["teams.role_changed"] == {"account_id": account, "before": "member", "after": "admin"}
        assert details["teams.limit_changed"] == {"account_id": account, "before": None, "after": 5000}
        assert details["teams.ownership_accepted"] == {"account_id": account, "previous_owner": owner.user_id}
        assert details["teams.member_removed"] == {
            "account_id": account,
            "role": "member",
            "keys_revoked": [extras_key["key"]["id"]],
            "invitations_revoked": 0,  # the one sent to them was accepted, so none was open
        }
        # The member's history, by target.
        assert [a for a, _, _ in await audit(served, admin, f"target={m}")] == [
            "teams.member_added",
            "teams.role_changed",
            "teams.limit_changed",
            "teams.ownership_offered",
            "teams.ownership_accepted",
        ]


async def test_refused_rolled_back_and_unchanging_actions_leave_no_row(db_url: str, ollama: Any, serve: Any) -> None:
    async with serve(teams_config(ollama, db_url, admin=True)) as served:
        admin = await register_user(served, admin=True)
        owner = await register_user(served, tier="enterprise")
        helper, plain, stranger = [await register_user(served) for _ in range(3)]
        for user, role in ((helper, "admin"), (plain, "member")):
            joining = await invite(served, owner, role=role, email=user.email)
            assert (await call(served, "POST", f"/api/team/invitations/{joining['token']}/accept", user))[0] == 200
        before = await audit(served, admin)
        # Refused by the policy: an admin on the owner, a member on anyone, a stranger.
        owner_path = f"/api/team/members/{owner.user_id}"
        assert code(await call(served, "PATCH", owner_path, helper, {"role": "member"})) == (403, "team_forbidden")
        assert code(await call(served, "DELETE", owner_path, helper)) == (403, "team_forbidden")
        assert code(await call(served, "DELETE", f"/api/team/members/{helper.user_id}", plain))[0] == 403
        assert (
            code(await call(served, "POST", "/api/team/invitations", plain, {"email": "x@y.com", "role": "member"}))[0]
            == 403
        )
        assert code(await call(served, "POST", "/api/team/transfer", helper, {"user_id": plain.user_id}))[0] == 403
        assert code(await call(served, "POST", "/api/team/transfer", plain, {"accept": True})) == (
            409,
            "no_ownership_offer",
        )
        # Rolled back: the accept of a user already in a team (409) leaves its invitation open and unaudited.
        again = await invite(served, owner, email=plain.email)
        accept_again = f"/api/team/invitations/{again['token']}/accept"
        assert code(await call(served, "POST", accept_again, plain)) == (409, "already_in_team")
        assert code(await call(served, "POST", accept_again, stranger)) == (403, "invitation_not_yours")
        # No change: the same role and limit again.
        same = {"role": "member", "monthly_limit_milli": None}
        assert (await call(served, "PATCH", f"/api/team/members/{plain.user_id}", owner, same))[0] == 200
        assert await audit(served, admin) == [
            *before,
            ("teams.invitation_created", owner.user_id, f"invitation:{again['id']}"),
        ]
