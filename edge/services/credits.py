"""The credits service, owned by credits: grants, balances, spend limits, usage and the ledger."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncConnection

from edge.services.keys import Service


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


@dataclass(frozen=True, slots=True)
class UsageTotals:
    """Settled requests, their tokens and the milli-credits they were charged."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    charged_milli: int = 0


@dataclass(frozen=True, slots=True)
class RouteUsage:
    """One route's (`local`, `cloud`, or `none`: refused before an upstream was chosen) totals today, over
    the last 7 and 30 days (today included), and this calendar month."""

    route: str
    today: UsageTotals
    last_7_days: UsageTotals
    last_30_days: UsageTotals
    this_month: UsageTotals


@dataclass(frozen=True, slots=True)
class TopAccount:
    """An account and what it spent this month."""

    account_id: int
    totals: UsageTotals


@dataclass(frozen=True, slots=True)
class TopModel:
    """A model and what was spent on it this month, every route together."""

    model: str
    totals: UsageTotals


@dataclass(frozen=True, slots=True)
class UsageOverview:
    """The platform's usage from the roll-ups, never a scan of usage rows: `today` and `month` are local
    days of the credits plugin's timezone; `routes` always has `local` and `cloud`; the tops are ordered by
    milli-credits charged this month, most first."""

    today: date
    month: date
    routes: tuple[RouteUsage, ...]
    top_accounts: tuple[TopAccount, ...]
    top_models: tuple[TopModel, ...]


@dataclass(frozen=True, slots=True)
class MonthTotals:
    """One calendar month of an account (`month`: its first local day, the credits plugin's timezone)."""

    month: date
    totals: UsageTotals


@dataclass(frozen=True, slots=True)
class AccountMonths:
    """An account's totals this calendar month and last, from the roll-ups (zeros for a month it spent nothing)."""

    account_id: int
    this_month: MonthTotals
    last_month: MonthTotals


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

    async def month_usage(self, account_id: int, *, user_id: int | None = None) -> MonthUsage:
        """This calendar month's requests, tokens and milli-credits spent on the account: only `user_id`'s
        requests when given (a team member's own share of the team's account: one indexed query on their rows),
        else one row of the `usage_monthly` roll-up."""
        ...

    async def spend(self, *, account_id: int, limit: SpendLimit) -> Spend:
        """Where `limit` stands in its current period for the account's scope (spent, held, what is left)."""
        ...

    async def spends(self, *, account_id: int, limits: Sequence[SpendLimit]) -> list[Spend]:
        """`spend` of each limit (in the same order) in one connection and one read of their counters: a
        page of keys (at most a few hundred limits)."""
        ...

    async def recount_spend(self, *, account_id: int, kind: str, scope_id: int) -> None:
        """Count the scope's spend in its current periods afresh from the account's usage rows: the plugin
        that sets a limit calls this once the limit is set (again), so what the scope spent while it had no
        limit, or one of another period, counts against it."""
        ...

    async def recent_usage(
        self, *, account_id: int, limit: int = 50, user_id: int | None = None, before_id: int | None = None
    ) -> list[UsageItem]:
        """The account's last `limit` usage rows, newest first: only `user_id`'s when given, only those with
        ids below `before_id` when given (page on with the last one's id)."""
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

    async def usage_overview(self, *, top: int = 10) -> UsageOverview:
        """Every account's usage by route today, over 7 and 30 days and this month, and the `top` accounts
        and models by milli-credits this month: read from the roll-ups, so its cost does not grow with the
        number of usage rows."""
        ...

    async def account_months(self, account_id: int) -> AccountMonths:
        """The account's requests, tokens and milli-credits charged this calendar month and last: two rows of
        the `usage_monthly` roll-up, never a scan of usage rows. Per user there is no roll-up, so none here."""
        ...


CREDITS: Service[Credits] = Service("credits")
