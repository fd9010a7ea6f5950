"""Who in a team may do what: ONE function, `permits`, asked by every team endpoint before it acts.

The table (plugins/teams/README.md shows the same):

    action            owner  admin  member  billing
    members.read        x      x
    members.invite      x      x
    members.update      x      x*
    members.remove      x      x*
    invitations.revoke  x      x
    ownership.offer     x
    keys.create         x      x      x
    keys.own            x      x      x
    keys.manage         x      x
    usage.own           x      x      x       x
    usage.read          x                     x
    billing             x                     x

    * an admin acts only on admins, members and billing members (never on the owner), and grants only those
      roles: nobody but the owner moves the ownership, and only by an offer the new owner accepts.

`keys.own` is listing and revoking the team keys one made oneself; `keys.manage` is every team key of the
team (list, revoke, set its spend limit). `usage.own` is one's own requests on the team's account;
`usage.read` is the whole team's.

Accepting an invitation or an offer of ownership is not in the table: the invitation's token (with the
invited user's own email or phone) or the offer itself is the permission.
"""

from __future__ import annotations

_MAY: dict[str, frozenset[str]] = {
    "members.read": frozenset({"owner", "admin"}),
    "members.invite": frozenset({"owner", "admin"}),
    "members.update": frozenset({"owner", "admin"}),
    "members.remove": frozenset({"owner", "admin"}),
    "invitations.revoke": frozenset({"owner", "admin"}),
    "ownership.offer": frozenset({"owner"}),
    "keys.create": frozenset({"owner", "admin", "member"}),
    "keys.own": frozenset({"owner", "admin", "member"}),
    "keys.manage": frozenset({"owner", "admin"}),
    "usage.own": frozenset({"owner", "admin", "member", "billing"}),
    "usage.read": frozenset({"owner", "billing"}),
    "billing": frozenset({"owner", "billing"}),
}
ACTIONS = tuple(_MAY)
# Roles anyone may be given by an invitation or a PATCH: the owner's comes only by a transfer.
GRANTABLE = ("admin", "member", "billing")


def permits(*, role: str, action: str, target_role: str | None = None, grant: str | None = None) -> bool:
    """Whether a member in `role` may take `action`, on a member in `target_role` (if the action has a
    target), giving the role `grant` (if it gives one). An unknown action or role is never permitted."""
    if role not in _MAY.get(action, frozenset()):
        return False
    if target_role == "owner":
        return False  # the owner is never updated or removed, only replaced by a transfer they start
    return grant is None or grant in GRANTABLE
