"""The accounts service, owned by auth_keys: accounts, users, keys and bans as other plugins see them."""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncConnection

from edge.services.keys import Service


@dataclass(frozen=True, slots=True)
class Account:
    """Who pays: the account's plan, and the owner (its first user) a notification is addressed to.
    `plan_expires_at` is UTC without a tzinfo, as the database keeps it; `owner_user_id`, `locale` and
    `phone` are None (`locale` "ar") for an account without users."""

    id: int
    tier: str
    plan_expires_at: datetime | None
    owner_user_id: int | None
    locale: str
    phone: str | None


@dataclass(frozen=True, slots=True)
class Contact:
    """Where to reach a user on WhatsApp (`phone` E.164) and in which language."""

    user_id: int
    phone: str
    locale: str


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A key just made for someone (the teams plugin: a member's key on the team's account). The secret
    exists only in this value: show it once, never store or log it."""

    id: int
    name: str
    prefix: str
    secret: str


class Keep(enum.Enum):
    """`KEEP`: leave this value of the account as it is."""

    KEEP = "keep"


KEEP = Keep.KEEP


USER_STATUSES = ("active", "banned")


@dataclass(frozen=True, slots=True)
class UserQuery:
    """An admin's search: `query` in the email, phone or name (plain text, at most 100 characters),
    `tier` of the account, `status` one of USER_STATUSES; all None: everyone."""

    query: str | None = None
    tier: str | None = None
    status: str | None = None
    before_id: int | None = None
    limit: int = 50


@dataclass(frozen=True, slots=True)
class UserProfile:
    """A user as an admin sees it, with the account that pays. Times are UTC without a tzinfo."""

    user_id: int
    account_id: int
    name: str
    email: str
    phone: str
    role: str
    locale: str
    created_at: datetime
    banned_at: datetime | None
    tier: str
    plan_expires_at: datetime | None


@dataclass(frozen=True, slots=True)
class KeySummary:
    """An API key without its secret: what an admin may see."""

    id: int
    user_id: int | None
    name: str
    prefix: str
    scopes: tuple[str, ...]
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None
    limit_milli: int | None
    limit_period: str | None


@dataclass(frozen=True, slots=True)
class UserCounts:
    """The platform's users at a moment: per tier (of their account; tiers without users left out), how
    many registered since each of the moments asked about (same order), and the accounts whose plan
    expires later than the moment (`active_subscriptions`), of which `expiring_subscriptions` by the
    `expiring_before` asked about."""

    users_by_tier: tuple[tuple[str, int], ...]
    new_users: tuple[int, ...]
    active_subscriptions: int
    expiring_subscriptions: int


@dataclass(frozen=True, slots=True)
class KeyChange:
    """A key before and after a change (equal when it changed nothing: revoking a revoked key)."""

    before: KeySummary
    after: KeySummary


class Accounts(Protocol):
    async def account(self, account_id: int, *, conn: AsyncConnection | None = None) -> Account | None:
        """The account, or None when there is none with that id (any int is safe to ask for). Inside a
        transaction pass its `conn`: a second pooled connection per transaction can exhaust the pool."""
        ...

    async def accounts(self, account_ids: Sequence[int]) -> list[Account]:
        """The accounts of those ids that exist, in one query (at most a few hundred ids), by id."""
        ...

    async def set_plan(
        self,
        *,
        account_id: int,
        tier: str | Keep = KEEP,
        plan_expires_at: datetime | Keep | None = KEEP,
        if_plan_expires_at: datetime | Keep | None = KEEP,
        conn: AsyncConnection | None = None,
    ) -> Account | None:
        """Set the tier and/or the plan's expiry (UTC, None: never) in one transaction, then make every
        worker forget the account's cached keys; the account as it now is, or None when there is none
        (or, with `if_plan_expires_at`, when the plan's expiry is no longer that: nothing changed).
        The caller checks `tier` against the configured tiers. With `conn` (from `gateway.database.begin()`)
        the change is made in the caller's transaction, and the caches are told once that commits."""
        ...

    async def invalidate_account(self, account_id: int) -> None:
        """Forget cached principals of the account's keys on every worker (tier or plan expiry changed)."""
        ...

    async def invalidate_user(self, user_id: int) -> None:
        """Forget cached principals of the user's keys on every worker (role or locale changed)."""
        ...

    async def invalidate_key(self, key_id: int) -> None:
        """Forget the key on every worker (revoked or changed)."""
        ...

    async def expiring(self, *, before: datetime, after_id: int = 0, limit: int = 500) -> list[Account]:
        """Accounts whose plan has an expiry earlier than `before` (UTC), past ones included, by id from
        after `after_id`, at most `limit` (page on with the last one's id)."""
        ...

    async def lapse(self, *, account_id: int, plan_expires_at: datetime, tier: str) -> bool:
        """Put the account on `tier` with no expiry, only if its plan still expires at `plan_expires_at`
        (a plan paid meanwhile moved it, and then nothing changes); whether it did. Caches are told."""
        ...

    async def issue_key(self, *, account_id: int, user_id: int, name: str, scopes: tuple[str, ...]) -> IssuedKey:
        """A new key of `user_id` billing `account_id` (the caller checked the user may have one there)."""
        ...

    async def revoke_keys(self, *, account_id: int, user_id: int, conn: AsyncConnection | None = None) -> list[int]:
        """Revoke every live key `user_id` has on `account_id` and make every worker forget each at once;
        the revoked keys' ids (none: an empty list). With `conn` (from `gateway.database.begin()`) in the
        caller's transaction, and the workers are told once it commits."""
        ...

    async def admins(self) -> list[Contact]:
        """Every admin user's phone and language, for the admins' alerts (at most a few hundred)."""
        ...

    async def users(self, wanted: UserQuery) -> list[UserProfile]:
        """Users matching `wanted`, newest first (by id), at most `wanted.limit`: page on with the last id
        as `before_id`. `query` is matched as plain text (LIKE wildcards in it are escaped)."""
        ...

    async def user(self, user_id: int) -> UserProfile | None:
        """The user with its account's plan, or None (any int is safe to ask for)."""
        ...

    async def profiles(self, user_ids: Collection[int]) -> list[UserProfile]:
        """The users among `user_ids` that exist (any ints are safe), in no particular order; at most a few
        thousand ids per call (a team's members)."""
        ...

    def normal_email(self, raw: str) -> str | None:
        """`raw` in the one form a user's email is stored and matched in (NFKC, case-folded, trimmed), or
        None when it is not an email address registration would take."""
        ...

    def normal_phone(self, raw: str) -> str | None:
        """`raw` (`+965 5123 4567`, `0096551234567`, a bare local number, Arabic-Indic digits, ...) in the
        E.164 form a user's phone is stored and matched in, or None when it is not a phone number."""
        ...

    async def account_keys(self, *, account_id: int) -> list[KeySummary]:
        """Every key of the account, newest first, revoked ones included; never a secret or its hash."""
        ...

    async def team_keys(
        self, *, account_id: int, user_id: int | None = None, before_id: int | None = None, limit: int = 50
    ) -> list[KeySummary]:
        """The account's team keys (made by users whose own account is another: its members), only
        `user_id`'s when given, newest first, revoked ones included, with ids below `before_id`, at most
        `limit`. Never the account's own users' keys, a secret or its hash."""
        ...

    async def revoke_team_key(
        self, *, account_id: int, key_id: int, user_id: int | None = None, conn: AsyncConnection | None = None
    ) -> KeyChange | None:
        """Revoke one of the account's team keys (`user_id`'s only, when given; idempotent), its row locked,
        and make every worker forget it once that commits; None when there is no such team key (any int is
        safe to ask for). `conn` as for `revoke_keys`."""
        ...

    async def set_team_key_limit(
        self, *, account_id: int, key_id: int, fields: Mapping[str, Any], conn: AsyncConnection | None = None
    ) -> KeyChange | None:
        """Set a team key's spend limit from `fields` (`limit_milli`, `limit_period`) by PATCH /api/keys'
        rules, raising its 422 for bad ones; every worker applies it to the key's next request once that
        commits. None when the account has no such team key. `conn` as for `revoke_keys`."""
        ...

    async def ban(self, *, user_id: int, conn: AsyncConnection | None = None) -> UserProfile | None:
        """Ban the user (idempotent: a banned user keeps the first `banned_at`): their sessions end in
        the same transaction, login is refused, and keys they made stop on every worker once it commits.
        The user as it now is, or None when there is none. `conn` as for `set_plan`."""
        ...

    async def unban(self, *, user_id: int, conn: AsyncConnection | None = None) -> UserProfile | None:
        """Lift a ban (idempotent): login and the user's keys work again. As `ban` otherwise."""
        ...

    async def counts(self, *, now: datetime, new_since: tuple[datetime, ...], expiring_before: datetime) -> UserCounts:
        """Counts for the admins' overview (times UTC): indexed COUNTs, one round trip."""
        ...


ACCOUNTS: Service[Accounts] = Service("accounts")
