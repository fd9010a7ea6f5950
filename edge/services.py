"""What plugins offer each other: small typed services, provided by the owning plugin at startup.

Plugins never import each other. One that offers something (auth_keys: accounts and the portal's guards;
credits: grants, balances and usage) provides it under a `Service` key from this module, and one that needs
it asks the gateway by the same key:

    gateway.provide(ACCOUNTS, self.accounts)        # the owner, in `resayil_startup`
    await gateway.service(ACCOUNTS).set_plan(...)   # typed: strict mypy checks every call and result
    credits = gateway.maybe(CREDITS)                # None when no plugin provides it

A service is asked for when it is used (in a route or a hook), not kept at startup, because the order in
which plugins start is not part of the contract. Results are frozen dataclasses, never `dict[str, Any]`.
The guards have a core default (`NoGuards`), so a portal route that needs a user answers the same 401
whether or not a plugin that logs users in is enabled. Keep each Protocol to what its callers use: a new
caller adds the method it needs, and the owner implements it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Generic, Protocol, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.requests import Request

from edge.errors import Forbidden, GatewayError

T = TypeVar("T")


class Service(Generic[T]):
    """The typed key of one service. `default` answers when no plugin provides it (None: no default)."""

    __slots__ = ("default", "name")

    def __init__(self, name: str, *, default: T | None = None) -> None:
        self.name = name
        self.default = default

    def __repr__(self) -> str:
        return f"Service({self.name!r})"


class MissingService(LookupError):
    """Asked for a service no enabled plugin provides (and that has no core default)."""

    def __init__(self, key: Service[Any]) -> None:
        super().__init__(f"no enabled plugin provides the {key.name!r} service")
        self.key = key


# ---- accounts: owned by auth_keys ---------------------------------------------------------------------------


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


class Accounts(Protocol):
    async def account(self, account_id: int, *, conn: AsyncConnection | None = None) -> Account | None:
        """The account, or None when there is none with that id (any int is safe to ask for). Inside a
        transaction pass its `conn`: a second pooled connection per transaction can exhaust the pool."""
        ...

    async def set_plan(
        self,
        *,
        account_id: int,
        tier: str | Keep = KEEP,
        plan_expires_at: datetime | Keep | None = KEEP,
        conn: AsyncConnection | None = None,
    ) -> Account | None:
        """Set the tier and/or the plan's expiry (UTC, None: never) in one transaction, then make every
        worker forget the account's cached keys; the account as it now is, or None when there is none.
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

    async def revoke_keys(self, *, account_id: int, user_id: int) -> list[int]:
        """Revoke every live key `user_id` has on `account_id` and make every worker forget each at once;
        the revoked keys' ids (none: an empty list)."""
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

    async def account_keys(self, *, account_id: int) -> list[KeySummary]:
        """Every key of the account, newest first, revoked ones included; never a secret or its hash."""
        ...

    async def ban(self, *, user_id: int, conn: AsyncConnection | None = None) -> UserProfile | None:
        """Ban the user (idempotent: a banned user keeps the first `banned_at`): their sessions end in
        the same transaction, login is refused, and keys they made stop on every worker once it commits.
        The user as it now is, or None when there is none. `conn` as for `set_plan`."""
        ...

    async def unban(self, *, user_id: int, conn: AsyncConnection | None = None) -> UserProfile | None:
        """Lift a ban (idempotent): login and the user's keys work again. As `ban` otherwise."""
        ...


ACCOUNTS: Service[Accounts] = Service("accounts")


# ---- the portal's guards: owned by auth_keys, with a core default ----------------------------------------------


@dataclass(frozen=True, slots=True)
class PortalUser:
    """The logged-in user of a portal request, with the account that pays. `plan_expires_at` is Unix time."""

    user_id: int
    account_id: int
    role: str
    locale: str
    name: str
    email: str
    phone: str
    tier: str
    plan_expires_at: int | None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


class Guards(Protocol):
    async def current_user(self, request: Request) -> PortalUser | None:
        """The logged-in user, or None; no CSRF check (for reads that work logged out too)."""
        ...

    async def require_user(self, request: Request) -> PortalUser:
        """The logged-in user; 401 `not_authenticated` without a live session, 403 `csrf_failed` for a
        state-changing method whose X-CSRF-Token does not match the session's."""
        ...

    async def require_admin(self, request: Request) -> PortalUser:
        """Like `require_user`, and 403 `admin_required` unless the user is an admin."""
        ...


def not_logged_in() -> GatewayError:
    return GatewayError("Log in to continue.", status=401, code="not_authenticated")


def admin_required() -> Forbidden:
    return Forbidden("This needs an administrator.", code="admin_required")


class NoGuards:
    """The core's guards when no plugin provides them: nobody can log in, so every guarded route answers
    401 `not_authenticated`, exactly what it answers a caller without a session when a plugin does."""

    async def current_user(self, request: Request) -> PortalUser | None:
        return None

    async def require_user(self, request: Request) -> PortalUser:
        raise not_logged_in()

    async def require_admin(self, request: Request) -> PortalUser:
        raise not_logged_in()


GUARDS: Service[Guards] = Service("guards", default=NoGuards())


# ---- credits: owned by credits ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Balance:
    """An account's milli-credits: `available_milli` = `balance_milli` - `reserved_milli` (live holds)."""

    account_id: int
    balance_milli: int
    reserved_milli: int
    available_milli: int


@dataclass(frozen=True, slots=True)
class MonthUsage:
    """This calendar month's totals (the credits plugin's timezone) since `since`, its first day."""

    account_id: int
    since: date
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_milli: int


@dataclass(frozen=True, slots=True)
class Grant:
    """One ledger row a grant wrote, or found: `created` is False when the idempotency key was used
    before, and the row is then the first one (compare its amount and reason to tell a retry from a
    reuse). `created_at` is ISO 8601 in UTC, as the API shows it."""

    id: int
    account_id: int
    kind: str
    amount_milli: int
    balance_after_milli: int
    reference: str
    actor: str | None
    reason: str | None
    created_at: str
    created: bool


class BalanceTooLow(Exception):
    """A negative adjustment would take the available balance below zero."""

    def __init__(self, available_milli: int) -> None:
        super().__init__(f"available balance is {available_milli} milli-credits")
        self.available_milli = available_milli


# ---- spend limits: set by the plugin that knows the scope (auth_keys: keys), enforced by credits ---------------

SPEND_PERIODS = ("day", "month", "total")


@dataclass(frozen=True, slots=True)
class SpendLimit:
    """At most `limit_milli` spent by one scope (`kind` "key": an API key; "member": a team member) per
    `period`: a day or a calendar month in the credits plugin's timezone, or in total. `scope_id` is the
    key's (or the member's) id; scopes of different kinds never share a counter."""

    kind: str
    scope_id: int
    limit_milli: int
    period: str


@dataclass(frozen=True, slots=True)
class SpendLimits:
    """The principal's identity fact (edge/context.py) listing every limit its requests count against,
    in the order they are checked. A principal without limits carries no such fact, so the credits plugin
    adds no work to its requests. A plugin adding a limit replaces the fact with one that has it too."""

    limits: tuple[SpendLimit, ...]


@dataclass(frozen=True, slots=True)
class Spend:
    """One limit's period as it stands: `spent_milli` settled in it, `held_milli` by requests in flight,
    `remaining_milli` = limit - spent - held (never below 0). `period_start` is the period's first local day
    (None for `total`), `resets_at` when the next period starts (UTC, None for `total`)."""

    limit: SpendLimit
    spent_milli: int
    held_milli: int
    remaining_milli: int
    period_start: date | None
    resets_at: datetime | None


@dataclass(frozen=True, slots=True)
class UsageItem:
    """One settled request as the credits plugin recorded it (`created_at` UTC without a tzinfo)."""

    id: int
    created_at: datetime
    request_id: str
    account_id: int
    user_id: int | None
    key_id: int | None
    model: str
    endpoint: str
    route: str
    prompt_tokens: int
    completion_tokens: int
    cost_milli: int
    status: int
    outcome: str


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One ledger row (`created_at` UTC without a tzinfo)."""

    id: int
    kind: str
    amount_milli: int
    balance_after_milli: int
    reference: str
    actor: str | None
    reason: str | None
    created_at: datetime


class Credits(Protocol):
    async def grant(
        self,
        *,
        account_id: int,
        amount_milli: int,
        kind: str,
        idempotency_key: str,
        reason: str | None = None,
        actor: str | None = None,
        conn: AsyncConnection | None = None,
    ) -> Grant:
        """Add credits as one ledger row: `kind` grant, subscription, topup, refund or adjustment (only an
        adjustment may be negative). Idempotent by (kind, idempotency_key). Raises ValueError for a bad kind
        or amount, and BalanceTooLow when a negative adjustment would take the available balance below 0.
        With `conn` (from `gateway.database.begin()`) the row is written in the caller's transaction: it
        commits or rolls back with the caller's own writes (billing credits a paid order this way)."""
        ...

    async def balance(self, account_id: int) -> Balance:
        """The account's balance (zeros for an account that never had credits)."""
        ...

    async def month_usage(self, account_id: int) -> MonthUsage:
        """This calendar month's requests, tokens and milli-credits spent."""
        ...

    async def spend(self, *, account_id: int, limit: SpendLimit) -> Spend:
        """Where `limit` stands in its current period for the account's scope (spent, held, what is left)."""
        ...

    async def recent_usage(self, *, account_id: int, limit: int = 50) -> list[UsageItem]:
        """The account's last `limit` usage rows, newest first."""
        ...

    async def ledger_entries(self, *, account_id: int, limit: int = 50) -> list[LedgerEntry]:
        """The account's last `limit` ledger rows, newest first."""
        ...

    async def usage_rows(
        self, *, since: datetime | None, until: datetime | None, after_id: int = 0, limit: int = 1000
    ) -> list[UsageItem]:
        """Every account's usage rows created in [since, until) (UTC, None: open), by id after `after_id`,
        at most `limit`: a keyset page, so an export never holds more than one page."""
        ...


CREDITS: Service[Credits] = Service("credits")


# ---- billing: owned by billing ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OrderSummary:
    """One order as an admin's user page shows it: our reference, never the row number; fils, not floats."""

    reference: str
    product_id: str
    status: str
    price_fils: int
    currency: str
    created_at: datetime
    paid_at: datetime | None


class Billing(Protocol):
    async def orders(self, *, account_id: int, limit: int = 50) -> list[OrderSummary]:
        """The account's last `limit` orders, newest first."""
        ...


BILLING: Service[Billing] = Service("billing")
