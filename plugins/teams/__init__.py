"""Enterprise teams: members in roles, invitations, and the members' keys on the team's account."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.routing import BaseRoute

from edge.clock import utc_now
from edge.context import RequestContext
from edge.hookspecs import hookimpl
from edge.services import ACCOUNTS, TEAMS, SpendLimit, SpendLimits, TeamKeyView
from edge.settings import ConfigError
from plugins.teams import answers, routes
from plugins.teams.invitations import InvitationStore
from plugins.teams.members import MemberStore, TeamMembership
from plugins.teams.policy import permits
from plugins.teams.service import TeamService

if TYPE_CHECKING:
    from edge.gateway import Gateway


class Plugin:
    """Teams of an Enterprise account: roles (plugins/teams/policy.py), invitations, and in `authorize`
    the rules of a team key, a key whose user is not the account's own: it is refused while the account
    is below Enterprise (403 `team_requires_enterprise`), once its member is gone, or while the member's role
    may hold no team keys (403 `team_forbidden`: billing), and otherwise carries
    the member's monthly credit limit to the credits plugin (a `SpendLimit` of kind "member").

    A key of the account's own user costs a dict lookup here; a team key one indexed read of its member's
    row, so a PATCH of the member's limit or role applies to their next request on every worker.
    """

    @dataclass
    class Settings:
        invitation_seconds: int = 7 * 86400
        # Appended to server.public_url, then the token: the portal's page that accepts an invitation.
        accept_path: str = "/#/team/join/"
        # Users whose own account is remembered per worker (it never changes); past this, forgotten at once.
        home_cache_size: int = 100_000

    def __init__(self, settings: Plugin.Settings) -> None:
        if settings.invitation_seconds < 60:
            raise ConfigError("plugins.teams.settings.invitation_seconds: must be at least 60")
        self.settings = settings
        self._gateway: Gateway | None = None
        self._members: MemberStore | None = None
        self._invitations: InvitationStore | None = None
        self._homes: dict[int, int] = {}

    @property
    def gateway(self) -> Gateway:
        assert self._gateway is not None, "teams has not started"
        return self._gateway

    @property
    def members(self) -> MemberStore:
        assert self._members is not None, "teams has not started"
        return self._members

    @property
    def invitations(self) -> InvitationStore:
        assert self._invitations is not None, "teams has not started"
        return self._invitations

    def now(self) -> datetime:
        """UTC-naive, from the gateway's clock (tests move it)."""
        return utc_now(self.gateway.clock)

    @hookimpl
    async def resayil_startup(self, gateway: Gateway) -> None:
        self._gateway = gateway
        self._members = MemberStore(database=gateway.database)
        self._invitations = InvitationStore(database=gateway.database)
        gateway.provide(TEAMS, TeamService(self))

    @hookimpl
    def resayil_routes(self, gateway: Gateway) -> list[BaseRoute]:
        """/api/team/*."""
        return routes.build(self)

    @hookimpl
    def resayil_migrations(self) -> str:
        """team_members and team_invitations (branch `teams`)."""
        return str(Path(__file__).parent / "migrations")

    @hookimpl
    async def resayil_authorize(self, ctx: RequestContext) -> None:
        """Refuse a team key of a removed member or of an account below Enterprise; give a team key its
        member's facts (TeamMembership, what /v1/account may show in TeamKeyView, and the monthly limit in
        SpendLimits)."""
        principal = ctx.principal
        if principal is None or principal.account_id is None or principal.user_id is None:
            return
        home = await self._home(principal.user_id)
        if home is None or home == principal.account_id:
            return  # the account's own user (or no user the database knows): not a team key
        member = await self.members.get(account_id=principal.account_id, user_id=principal.user_id)
        if member is None:
            raise answers.team_member_gone()
        if not permits(role=member.role, action="keys.create"):
            raise answers.team_forbidden("keys.create")  # a role without team keys (billing) spends nothing
        if principal.tier != "enterprise":
            raise answers.team_requires_enterprise()
        principal = principal.with_fact(TeamMembership(account_id=member.account_id, role=member.role))
        # What GET /v1/account shows the key's holder: the policy's usage.read and billing, else their own.
        view = TeamKeyView(
            user_id=member.user_id,
            account_usage=permits(role=member.role, action="usage.read"),
            balance=permits(role=member.role, action="billing"),
        )
        principal = principal.with_fact(view)
        if member.monthly_limit_milli is not None:
            limit = SpendLimit("member", member.user_id, member.monthly_limit_milli, "month")
            others = principal.fact(SpendLimits)
            principal = principal.with_fact(SpendLimits((*(others.limits if others else ()), limit)))
        ctx.principal = principal

    async def _home(self, user_id: int) -> int | None:
        """The user's own account (None for a user that does not exist)."""
        home = self._homes.get(user_id)
        if home is None:
            # Asked of auth_keys (the ACCOUNTS service); a user's own account never changes, so it is kept.
            found = await self.gateway.service(ACCOUNTS).user(user_id)
            if found is None:
                return None
            if len(self._homes) >= self.settings.home_cache_size:
                self._homes.clear()
            home = self._homes[user_id] = found.account_id
        return home
