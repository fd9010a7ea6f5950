"""Everything a team endpoint's caller reads when refused, in one place (the portal's one error shape).

Consistent on purpose: a user in no team meets 403 `team_required`; a member whose role does not permit the
action meets 403 `team_forbidden`; a member id outside the caller's own team (another team's, or nobody's)
meets 404 `member_not_found`, so no team learns who is in another.
"""

from __future__ import annotations

from edge.errors import Forbidden, GatewayError, NotFound


def team_required() -> Forbidden:
    return Forbidden("Teams come with the Enterprise plan; you are not in a team.", code="team_required")


def team_forbidden(action: str) -> Forbidden:
    return Forbidden(f"Your role in the team does not allow this ({action}).", code="team_forbidden")


def team_requires_enterprise() -> Forbidden:
    return Forbidden(
        "This team's account is no longer on the Enterprise plan, so its members' keys are paused until it is.",
        code="team_requires_enterprise",
    )


def member_not_found() -> NotFound:
    return NotFound("There is no member with this id in your team.", code="member_not_found")


def invitation_not_found() -> NotFound:
    return NotFound("This invitation does not exist, was revoked, or was already used.", code="invitation_not_found")


def invitation_expired() -> GatewayError:
    return GatewayError("This invitation has expired; ask for a new one.", status=410, code="invitation_expired")


def invitation_not_yours() -> Forbidden:
    return Forbidden(
        "This invitation was sent to another email or phone; log in as that user to accept it.",
        code="invitation_not_yours",
    )


def already_in_team() -> GatewayError:
    return GatewayError("You are already in a team; leave it first.", status=409, code="already_in_team")


def no_offer() -> GatewayError:
    return GatewayError("There is no offer of this team's ownership to you.", status=409, code="no_ownership_offer")


def team_member_gone() -> Forbidden:
    return Forbidden("This key's user is no longer in the team that pays for it.", code="team_member_removed")
