"""Invitations into a team: a one-time token sent to an email or a phone, of which only the hash is kept.

An invitation is accepted at most once, by the user whose own email or phone it names, before it expires
and unless it was revoked; the accepting UPDATE checks all of that in its WHERE and the membership row is
inserted in the same transaction, so two accepts of one token (a replay, a double click) make one member.
The same claim serves a new user registering through the link (`claim`, inside the registration's
transaction, asked through the TEAMS service).

Emails and phones are stored in the normal forms auth_keys stores a user's in (asked of the ACCOUNTS
service when the invitation is made), so `+965 5123 4567`, `0096551234567` and `51234567` invite the user
registered as `+96551234567`, and `Bob@Example.com` the one registered as `bob@example.com`.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from edge.db import Database
from plugins.teams import answers
from plugins.teams.tables import team_invitations, team_members
from plugins.teams.trail import Actor, note

TOKEN_PREFIX = "rti_"
# What `create` makes: anything else is no invitation, and is answered without a query.
TOKEN = re.compile(r"rti_[A-Za-z0-9_-]{43}")


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Invitation:
    id: int
    account_id: int
    role: str
    email: str | None
    phone: str | None
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class Invitee:
    """Who is accepting: the user, their own account, and their stored email and phone."""

    user_id: int
    account_id: int
    email: str
    phone: str


class InvitationStore:
    def __init__(self, *, database: Database) -> None:
        self.db = database

    async def create(
        self,
        *,
        account_id: int,
        email: str | None,
        phone: str | None,
        role: str,
        actor: Actor,
        expires_at: datetime,
    ) -> tuple[int, str]:
        """Store a new invitation; its id and token (the only time the token exists)."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        async with self.db.begin() as conn:
            result = await conn.execute(
                team_invitations.insert().values(
                    account_id=account_id,
                    token_hash=token_digest(token),
                    email=email,
                    phone=phone,
                    role=role,
                    invited_by=actor.user_id,
                    created_at=actor.at,
                    expires_at=expires_at,
                )
            )
            invitation_id = int(result.inserted_primary_key[0])  # type: ignore[index]
            sent_to = {"email": email} if email is not None else {"phone": phone}
            await note(
                conn,
                actor,
                "invitation_created",
                target=f"invitation:{invitation_id}",
                account_id=account_id,
                role=role,
                expires_at=expires_at.isoformat() + "Z",
                **sent_to,
            )
        return invitation_id, token

    async def revoke(self, *, account_id: int, invitation_id: int, actor: Actor) -> bool:
        """Revoke the team's open invitation; False when the team has no such open invitation."""
        c = team_invitations.c
        async with self.db.begin() as conn:
            done = await conn.execute(
                team_invitations.update()
                .where(
                    c.id == invitation_id, c.account_id == account_id, c.revoked_at.is_(None), c.accepted_at.is_(None)
                )
                .values(revoked_at=actor.at)
            )
            if done.rowcount != 1:
                return False
            await note(conn, actor, "invitation_revoked", target=f"invitation:{invitation_id}", account_id=account_id)
        return True

    @staticmethod
    async def revoke_of_member(
        conn: AsyncConnection, *, account_id: int, user_id: int, email: str | None, phone: str | None, at: datetime
    ) -> int:
        """In the caller's transaction: revoke the team's open invitations to this member's email or phone
        (None: none), and those they sent (a member being removed must not come back with a spare link, nor
        send a second account of theirs in); how many."""
        c = team_invitations.c
        to = [c.invited_by == user_id]
        to += [c.email == email] if email else []
        to += [c.phone == phone] if phone else []
        done = await conn.execute(
            team_invitations.update()
            .where(c.account_id == account_id, c.accepted_at.is_(None), c.revoked_at.is_(None), sa.or_(*to))
            .values(revoked_at=at)
        )
        return int(done.rowcount)

    async def accept(self, *, token: str, invitee: Invitee, actor: Actor) -> Invitation:
        """Make the invitee a member of the invitation's team; raises the refusal a client sees otherwise."""
        async with self.db.begin() as conn:
            return await claim(conn, token=token, invitee=invitee, actor=actor, registered=False)


async def claim(conn: AsyncConnection, *, token: str, invitee: Invitee, actor: Actor, registered: bool) -> Invitation:
    """In the caller's transaction: use the invitation for `invitee` and insert their membership, audited;
    raises the refusal a client sees (and the caller's transaction then rolls back) otherwise.

    The UPDATE that marks it used repeats every condition in its WHERE, so of two claims of one token (a
    replay, a double click, two registrations at once) exactly one changes the row; the other, which waited
    for the row's lock on MariaDB, finds it used and is refused."""
    c = team_invitations.c
    row = (await conn.execute(sa.select(team_invitations).where(c.token_hash == token_digest(token)))).first()
    if row is None or row.revoked_at is not None or row.accepted_at is not None:
        raise answers.invitation_not_found()
    now = actor.at
    if row.expires_at <= now:
        raise answers.invitation_expired()
    if not _addressed_to(row.email, row.phone, invitee):
        raise answers.invitation_not_yours()
    taken = await conn.execute(
        team_invitations.update()
        .where(c.id == row.id, c.accepted_at.is_(None), c.revoked_at.is_(None), c.expires_at > now)
        .values(accepted_at=now, accepted_by=invitee.user_id)
    )
    if taken.rowcount != 1:
        raise answers.invitation_not_found()
    account_id = int(row.account_id)
    try:
        await conn.execute(
            team_members.insert().values(
                account_id=account_id,
                user_id=invitee.user_id,
                role=row.role,
                home=account_id == invitee.account_id,
                joined_at=now,
            )
        )
    except IntegrityError:  # the user is in a team already: the caller's whole transaction rolls back
        raise answers.already_in_team() from None
    invitation_id = int(row.id)
    await note(
        conn,
        actor,
        "invitation_accepted",
        target=f"invitation:{invitation_id}",
        account_id=account_id,
        user_id=invitee.user_id,
        role=row.role,
        registered=registered,
    )
    await note(
        conn,
        actor,
        "member_added",
        target=f"user:{invitee.user_id}",
        account_id=account_id,
        role=row.role,
        invitation_id=invitation_id,
    )
    return Invitation(
        id=invitation_id,
        account_id=account_id,
        role=row.role,
        email=row.email,
        phone=row.phone,
        expires_at=row.expires_at,
    )


def _addressed_to(email: str | None, phone: str | None, invitee: Invitee) -> bool:
    if email is not None:
        return email == invitee.email
    return phone is not None and phone == invitee.phone
