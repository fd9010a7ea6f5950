"""The team API. Every handler finds the caller's membership first and asks `policy.permits` before it acts.

- `GET /api/team`: the caller's team and role.
- `GET /api/team/members`; `POST /api/team/members` (same as `POST /api/team/invitations`: a member joins
  only by accepting); `PATCH /api/team/members/{user_id}` (`role`, `monthly_limit_milli`);
  `DELETE /api/team/members/{user_id}` (revokes the keys they made for the team, on every worker).
- `POST /api/team/invitations` (`email` or `phone`, `role`): the token, once; `DELETE
  /api/team/invitations/{id}` revokes; `POST /api/team/invitations/{token}/accept` joins.
- `POST /api/team/transfer`: the owner offers the ownership (`user_id`); the offered member accepts
  (`accept: true`).
- `POST /api/team/keys` (`name`): a key of the caller that bills the team's account; listing, revoking and
  limiting team keys, and the team's usage, are in plugins/teams/keys.py.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from edge import audit
from edge.inputs import FieldError, Form, Parser, choice, integer, read_json, text
from edge.services import ACCOUNTS, CREDITS, GUARDS, PortalUser
from plugins.teams import answers
from plugins.teams.invitations import TOKEN, Invitee
from plugins.teams.keys import TeamKeys
from plugins.teams.members import Membership, member_json
from plugins.teams.policy import GRANTABLE, permits
from plugins.teams.trail import Actor

if TYPE_CHECKING:
    from plugins.teams import Plugin

BIGINT_MAX = 2**63 - 1
MAX_LIMIT_MILLI = 10**15
NO_STORE = {"cache-control": "no-store"}


def _login(normal: Callable[[str], str | None], error: FieldError) -> Parser[str | None]:
    """An email or a phone in the form auth_keys stores a user's in (`normal`, from the ACCOUNTS service),
    so the invitation matches the user it names however the inviter typed it."""

    def parse(value: Any) -> str | None:
        if value is None:
            return None
        found = normal(value) if isinstance(value, str) and len(value) <= 254 else None
        if found is None:
            raise error
        return found

    return parse


_EMAIL_INVALID = FieldError("email_invalid", "`email` must be an email address.")
_PHONE_INVALID = FieldError("phone_invalid", "`phone` must be a phone number, such as +965 5123 4567.")


def _limit(value: Any) -> int | None:
    return None if value is None else integer(subject="monthly_limit_milli", low=0, high=MAX_LIMIT_MILLI)(value)


def _path_id(request: Request, name: str) -> int:
    """The path's id, 0 (which nothing has) past BIGINT."""
    value = int(request.path_params[name])
    return value if value <= BIGINT_MAX else 0


class TeamApi:
    def __init__(self, plugin: Plugin) -> None:
        self.plugin = plugin

    def actor(self, request: Request, user: PortalUser) -> Actor:
        return Actor(user_id=user.user_id, ip=audit.request_ip(request), at=self.plugin.now())

    async def caller(self, request: Request) -> tuple[PortalUser, Membership]:
        """The logged-in user and their membership; the account's own Enterprise user founds its team the
        first time. 403 `team_required` for anyone else in no team."""
        user = await self.plugin.gateway.service(GUARDS).require_user(request)
        members = self.plugin.members
        membership = await members.of_user(user.user_id)
        if membership is None and user.tier == "enterprise":
            membership = await members.found_team(account_id=user.account_id, actor=self.actor(request, user))
        if membership is None:
            raise answers.team_required()
        return user, membership

    async def _allowed(self, request: Request, action: str) -> tuple[PortalUser, Membership]:
        user, me = await self.caller(request)
        if not permits(role=me.role, action=action):
            raise answers.team_forbidden(action)
        return user, me

    async def _target(self, me: Membership, user_id: int) -> Membership:
        target = await self.plugin.members.get(account_id=me.account_id, user_id=user_id) if user_id else None
        if target is None:
            raise answers.member_not_found()
        return target

    async def team(self, request: Request) -> Response:
        _, me = await self.caller(request)
        return JSONResponse(
            {
                "account_id": me.account_id,
                "role": me.role,
                "monthly_limit_milli": me.monthly_limit_milli,
                "ownership_offered": me.offered_owner,
            }
        )

    async def list_members(self, request: Request) -> Response:
        _, me = await self._allowed(request, "members.read")
        members = await self.plugin.members.listing(account_id=me.account_id)
        people = await self.plugin.gateway.service(ACCOUNTS).profiles([m.user_id for m in members])
        by_id = {p.user_id: p for p in people}
        data = [member_json(m, by_id.get(m.user_id)) for m in members]
        return JSONResponse({"object": "list", "data": data})

    async def update_member(self, request: Request) -> Response:
        user, me = await self._allowed(request, "members.update")
        target = await self._target(me, _path_id(request, "user_id"))
        form = Form(await read_json(request))
        form.only(("role", "monthly_limit_milli"))
        values: dict[str, Any] = {}
        if "role" in form.data:
            values["role"] = form.take("role", choice(subject="role", options=GRANTABLE))
        if "monthly_limit_milli" in form.data:
            values["monthly_limit_milli"] = form.take("monthly_limit_milli", _limit)
            if target.home and values["monthly_limit_milli"] is not None:
                form.fail("monthly_limit_milli", FieldError("limit_not_for_home", "The account's own user has none."))
        form.check()
        if not permits(role=me.role, action="members.update", target_role=target.role, grant=values.get("role")):
            raise answers.team_forbidden("members.update")
        if target.user_id == me.user_id and "monthly_limit_milli" in values:
            raise answers.team_forbidden("members.update")  # nobody lifts the limit set on them
        updated = await self.plugin.members.update(
            account_id=me.account_id, user_id=target.user_id, values=values, actor=self.actor(request, user)
        )
        if updated is None:
            raise answers.member_not_found()
        credits = self.plugin.gateway.maybe(CREDITS)
        if updated.monthly_limit_milli is not None and "monthly_limit_milli" in values and credits is not None:
            # What the member spent this month while they had no limit counts against the one set now.
            await credits.recount_spend(account_id=me.account_id, kind="member", scope_id=updated.user_id)
        return JSONResponse(
            {"user_id": updated.user_id, "role": updated.role, "monthly_limit_milli": updated.monthly_limit_milli}
        )

    async def remove_member(self, request: Request) -> Response:
        """Remove the member and revoke their keys on the team's account, in one transaction (every worker
        forgets the keys once it commits)."""
        user, me = await self._allowed(request, "members.remove")
        target = await self._target(me, _path_id(request, "user_id"))
        if target.home or not permits(role=me.role, action="members.remove", target_role=target.role):
            raise answers.team_forbidden("members.remove")
        accounts = self.plugin.gateway.service(ACCOUNTS)
        revoked = await self.plugin.members.remove(
            account_id=me.account_id,
            user_id=target.user_id,
            actor=self.actor(request, user),
            revoke=accounts.revoke_keys,
            person=await accounts.user(target.user_id),
        )
        if revoked is None:
            raise answers.member_not_found()
        return JSONResponse({"removed": target.user_id, "keys_revoked": revoked})

    async def invite(self, request: Request) -> Response:
        user, me = await self._allowed(request, "members.invite")
        form = Form(await read_json(request))
        form.only(("email", "phone", "role"))
        accounts = self.plugin.gateway.service(ACCOUNTS)
        email = form.take("email", _login(accounts.normal_email, _EMAIL_INVALID))
        phone = form.take("phone", _login(accounts.normal_phone, _PHONE_INVALID))
        role = form.take("role", choice(subject="role", options=GRANTABLE))
        if "email" not in form.errors and "phone" not in form.errors and (email is None) == (phone is None):
            form.fail("email", FieldError("email_or_phone", "Send exactly one of `email` and `phone`."))
        form.check()
        account = await accounts.account(me.account_id)
        if account is None or account.tier != "enterprise":
            raise answers.team_requires_enterprise()
        actor = self.actor(request, user)
        expires_at = actor.at + timedelta(seconds=self.plugin.settings.invitation_seconds)
        invitation_id, token = await self.plugin.invitations.create(
            account_id=me.account_id, email=email, phone=phone, role=role, actor=actor, expires_at=expires_at
        )
        base = self.plugin.gateway.config.server.public_url.rstrip("/")
        body = {
            "id": invitation_id,
            "token": token,
            "url": f"{base}{self.plugin.settings.accept_path}{token}",
            "role": role,
            "email": email,
            "phone": phone,
            "expires_at": expires_at.isoformat() + "Z",
        }
        return JSONResponse(body, status_code=201, headers=NO_STORE)

    async def revoke_invitation(self, request: Request) -> Response:
        user, me = await self._allowed(request, "invitations.revoke")
        invitation_id = _path_id(request, "invitation_id")
        if not await self.plugin.invitations.revoke(
            account_id=me.account_id, invitation_id=invitation_id, actor=self.actor(request, user)
        ):
            raise answers.invitation_not_found()
        return JSONResponse({"id": invitation_id, "revoked": True})

    async def accept(self, request: Request) -> Response:
        user = await self.plugin.gateway.service(GUARDS).require_user(request)
        token = request.path_params["token"]
        if not TOKEN.fullmatch(token):
            raise answers.invitation_not_found()
        invitee = Invitee(user_id=user.user_id, account_id=user.account_id, email=user.email, phone=user.phone)
        invitation = await self.plugin.invitations.accept(token=token, invitee=invitee, actor=self.actor(request, user))
        return JSONResponse({"account_id": invitation.account_id, "role": invitation.role})

    async def transfer(self, request: Request) -> Response:
        """The owner offers (`user_id`); the offered member accepts (`accept: true`)."""
        user, me = await self.caller(request)
        actor = self.actor(request, user)
        form = Form(await read_json(request))
        form.only(("user_id", "accept"))
        if form.data.get("accept") is True:
            form.check()
            if not await self.plugin.members.take_ownership(account_id=me.account_id, actor=actor):
                raise answers.no_offer()
            return JSONResponse({"account_id": me.account_id, "owner": me.user_id})
        user_id = form.take("user_id", integer(subject="user_id", low=1, high=BIGINT_MAX))
        form.check()
        if not permits(role=me.role, action="ownership.offer"):
            raise answers.team_forbidden("ownership.offer")
        target = await self._target(me, user_id)
        if target.user_id == me.user_id:
            raise answers.member_not_found()
        if not await self.plugin.members.offer(account_id=me.account_id, user_id=target.user_id, actor=actor):
            raise answers.team_forbidden("ownership.offer")  # the ownership moved meanwhile
        return JSONResponse({"account_id": me.account_id, "offered_to": target.user_id}, status_code=202)

    async def create_key(self, request: Request) -> Response:
        user, me = await self._allowed(request, "keys.create")
        form = Form(await read_json(request))
        form.only(("name",))
        name = form.take("name", text(subject="name", max_length=100))
        form.check()
        key = await self.plugin.gateway.service(ACCOUNTS).issue_key(
            account_id=me.account_id, user_id=user.user_id, name=name, scopes=("read", "write")
        )
        body = {"key": {"id": key.id, "name": key.name, "prefix": key.prefix}, "secret": key.secret}
        return JSONResponse(body, status_code=201, headers=NO_STORE)


def build(plugin: Plugin) -> list[BaseRoute]:
    api = TeamApi(plugin)
    keys = TeamKeys(api)
    return [
        Route("/api/team", api.team, methods=["GET"]),
        Route("/api/team/members", api.list_members, methods=["GET"]),
        Route("/api/team/members", api.invite, methods=["POST"]),
        Route("/api/team/members/{user_id:int}", api.update_member, methods=["PATCH"]),
        Route("/api/team/members/{user_id:int}", api.remove_member, methods=["DELETE"]),
        Route("/api/team/invitations", api.invite, methods=["POST"]),
        Route("/api/team/invitations/{invitation_id:int}", api.revoke_invitation, methods=["DELETE"]),
        Route("/api/team/invitations/{token}/accept", api.accept, methods=["POST"]),
        Route("/api/team/transfer", api.transfer, methods=["POST"]),
        Route("/api/team/keys", api.create_key, methods=["POST"]),
        Route("/api/team/keys", keys.list_keys, methods=["GET"]),
        Route("/api/team/keys/{key_id:int}", keys.update_key, methods=["PATCH"]),
        Route("/api/team/keys/{key_id:int}", keys.revoke_key, methods=["DELETE"]),
        Route("/api/team/usage", keys.team_usage, methods=["GET"]),
        Route("/api/team/usage/mine", keys.my_usage, methods=["GET"]),
    ]
