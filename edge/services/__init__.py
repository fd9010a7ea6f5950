"""What plugins offer each other: small typed services, provided by the owning plugin at startup.

Plugins never import each other. One that offers something (auth_keys: accounts and the portal's guards;
credits: grants, balances and usage; failover: upstreams and the cloud budget; teams: joining on
registration, a user's team; notify: users' notification preferences) provides it under a `Service` key from
this module, and one that needs it asks the gateway by the same key (one module per owner under
`edge.services`, all names re-exported here):

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

from edge.services.accounts import (
    ACCOUNTS,
    KEEP,
    USER_STATUSES,
    Account,
    Accounts,
    Contact,
    IssuedKey,
    Keep,
    KeyChange,
    KeySummary,
    UserCounts,
    UserProfile,
    UserQuery,
)
from edge.services.billing import (
    BILLING,
    Billing,
    OrderSummary,
    Revenue,
)
from edge.services.credits import (
    CREDITS,
    SPEND_PERIODS,
    AccountMonths,
    Balance,
    BalanceTooLow,
    Credits,
    Grant,
    LedgerEntry,
    MonthTotals,
    MonthUsage,
    RouteUsage,
    Spend,
    SpendLimit,
    SpendLimits,
    TopAccount,
    TopModel,
    UsageItem,
    UsageOverview,
    UsageTotals,
)
from edge.services.failover import (
    FAILOVER,
    CloudBudgetState,
    Failover,
    UpstreamState,
)
from edge.services.guards import (
    GUARDS,
    Guards,
    NoGuards,
    PortalUser,
    admin_required,
    not_logged_in,
)
from edge.services.keys import (
    MissingService,
    Service,
)
from edge.services.preferences import (
    PREFERENCES,
    NotificationChoices,
    Preferences,
)
from edge.services.teams import (
    TEAMS,
    TeamJoin,
    TeamKeyView,
    Teams,
    TeamStanding,
)

__all__ = [
    "ACCOUNTS",
    "BILLING",
    "CREDITS",
    "FAILOVER",
    "GUARDS",
    "KEEP",
    "PREFERENCES",
    "SPEND_PERIODS",
    "TEAMS",
    "USER_STATUSES",
    "Account",
    "AccountMonths",
    "Accounts",
    "Balance",
    "BalanceTooLow",
    "Billing",
    "CloudBudgetState",
    "Contact",
    "Credits",
    "Failover",
    "Grant",
    "Guards",
    "IssuedKey",
    "Keep",
    "KeyChange",
    "KeySummary",
    "LedgerEntry",
    "MissingService",
    "MonthTotals",
    "MonthUsage",
    "NoGuards",
    "NotificationChoices",
    "OrderSummary",
    "PortalUser",
    "Preferences",
    "Revenue",
    "RouteUsage",
    "Service",
    "Spend",
    "SpendLimit",
    "SpendLimits",
    "TeamJoin",
    "TeamKeyView",
    "TeamStanding",
    "Teams",
    "TopAccount",
    "TopModel",
    "UpstreamState",
    "UsageItem",
    "UsageOverview",
    "UsageTotals",
    "UserCounts",
    "UserProfile",
    "UserQuery",
    "admin_required",
    "not_logged_in",
]
