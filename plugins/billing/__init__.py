"""Billing: plans and credit packs paid in KWD through MyFatoorah, each paid order credited exactly once.

The plugin is settings, lifecycle and hooks. The catalogue is `products.py`, amounts `money.py`, the
provider's interface `gateway_client.py` and its v2 client `myfatoorah.py`, webhook signatures
`webhooks.py`; orders are `tables.py`/`order_rows.py` under the state machine of `rules.py`; checkout
`checkout.py`; confirming a payment `confirmation.py`; THE crediting transaction `crediting.py`; the
pending-order job `pending.py`; the JSON API `routes.py` with its answers in `answers.py`. The admins'
API is `admin.py` (reads in `admin_rows.py`, refunds `refunds.py`, bank-transfer orders
`manual_orders.py`); the `billing.reconcile` job and command `reconcile.py`; plan reminders and expiry
`renewals.py`, with their events in `lifecycle.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from edge.cli import Command
from edge.config import GatewayConfig
from edge.events import Event
from edge.hookspecs import hookimpl
from edge.jobs import Job
from edge.services import BILLING
from edge.settings import ConfigError
from plugins.billing import pending, reconcile, refunds, renewals
from plugins.billing.admin import admin_routes
from plugins.billing.confirmation import Confirmer
from plugins.billing.crediting import PlanRules
from plugins.billing.events import BILLING_EVENTS
from plugins.billing.lifecycle import LIFECYCLE_EVENTS
from plugins.billing.myfatoorah import MyFatoorahClient
from plugins.billing.products import DEFAULT_PACKS, PackSettings, Product, catalogue
from plugins.billing.routes import routes
from plugins.billing.service import BillingService

if TYPE_CHECKING:
    from starlette.routing import BaseRoute

    from edge.gateway import Gateway
    from plugins.billing.webhooks import Webhook

NOT_CONFIGURED = "payments are not configured: set RESAYIL_MYFATOORAH_TOKEN (checkout answers 503 until then)"


T = TypeVar("T")


def _started(value: T | None) -> T:
    if value is None:
        raise RuntimeError("the billing plugin has not started")
    return value


class Plugin:
    """Sells plans and packs through MyFatoorah and credits each paid order once, whatever arrives in
    whatever order: the payer's return, webhooks (v1, v2), or the pending-order job's own checks."""

    @dataclass
    class Settings:
        # `${RESAYIL_MYFATOORAH_URL}`, `${RESAYIL_MYFATOORAH_TOKEN}`, `${RESAYIL_MYFATOORAH_WEBHOOK_SECRET}`
        # in the YAML. Without a token the gateway starts and checkout answers 503.
        myfatoorah_url: str = "https://apitest.myfatoorah.com"
        token: str | None = None
        webhook_secret: str | None = None
        myfatoorah_timeout_seconds: float = 20.0
        packs: list[PackSettings] = field(default_factory=lambda: list(DEFAULT_PACKS))
        # A paid plan lasts this many days (a renewal adds them to the current expiry).
        plan_days: int = 30
        # Buying this tier publishes `enterprise.registered` (unless it renews a live one).
        enterprise_tier: str = "enterprise"
        # A pending order MyFatoorah still calls unpaid after this long becomes `expired`.
        order_expiry_seconds: int = 86_400
        max_pending_orders: int = 5
        # The payer's return asks MyFatoorah about an order at most once per this many seconds.
        callback_check_seconds: float = 10.0
        # The `billing.pending` job: how often it runs, how many orders it asks about per run at most,
        # and the backoff between two asks about one order.
        check_every_seconds: float = 60.0
        max_status_calls_per_run: int = 20
        first_check_seconds: float = 60.0
        max_check_interval_seconds: float = 3600.0
        # The portal's order result page, under server.public_url (`?order=…&result=…` is added).
        result_path: str = "/#/billing/result"
        seller_ar: str = "رسايل"
        seller_en: str = "Resayil"
        # The `billing.renewals` job (renewals.py): `subscription.renewal_due` this
        # many days before a plan ends (0: no reminder), and the fallback tier once it has ended.
        renewal_reminder_days: int = 3
        renewals_every_seconds: float = 3600.0
        # The daily `billing.reconcile` job (local time, the config's `timezone`): the orders of the last
        # `reconcile_days`, at most `max_reconcile_calls` GetPaymentStatus calls a run.
        reconcile_at: str = "04:00"
        reconcile_days: int = 7
        max_reconcile_calls: int = 500

    def __init__(self, settings: Plugin.Settings) -> None:
        s = settings
        if not 1 <= s.plan_days <= 3660 or s.order_expiry_seconds < 60 or not 1 <= s.max_pending_orders <= 100:
            raise ConfigError(
                "plugins.billing.settings: plan_days 1-3660, order_expiry_seconds >= 60, max_pending_orders 1-100"
            )
        if (
            min(s.check_every_seconds, s.first_check_seconds, s.max_check_interval_seconds, s.callback_check_seconds)
            <= 0
        ):
            raise ConfigError("plugins.billing.settings: the check intervals must be positive")
        if not 1 <= s.max_status_calls_per_run <= 1000:
            raise ConfigError("plugins.billing.settings.max_status_calls_per_run: must be between 1 and 1000")
        if not s.result_path.startswith("/"):
            raise ConfigError("plugins.billing.settings.result_path: must start with '/'")
        if not s.myfatoorah_url.startswith(("https://", "http://")):
            raise ConfigError("plugins.billing.settings.myfatoorah_url: must be an http(s) URL")
        if not 0 <= s.renewal_reminder_days <= 60 or s.renewals_every_seconds <= 0:
            raise ConfigError("plugins.billing.settings: renewal_reminder_days 0-60, renewals_every_seconds > 0")
        if not 1 <= s.reconcile_days <= 90 or not 1 <= s.max_reconcile_calls <= 10_000:
            raise ConfigError("plugins.billing.settings: reconcile_days 1-90, max_reconcile_calls 1-10000")
        self.settings = settings
        self.rules = PlanRules(days=s.plan_days, enterprise_tier=s.enterprise_tier)
        self._gateway: Gateway | None = None
        self._client: MyFatoorahClient | None = None
        self._confirmer: Confirmer | None = None
        self.products: tuple[Product, ...] = ()

    @property
    def gateway(self) -> Gateway:
        return _started(self._gateway)

    @property
    def client(self) -> MyFatoorahClient:
        return _started(self._client)

    @property
    def confirmer(self) -> Confirmer:
        return _started(self._confirmer)

    @hookimpl
    async def resayil_startup(self, gateway: Gateway) -> None:
        """Build the catalogue from the tiers and packs, and the MyFatoorah client on the shared session;
        provide the `BILLING` service."""
        self._gateway = gateway
        self.products = catalogue(tiers=gateway.config.tiers, packs=self.settings.packs)
        self._client = MyFatoorahClient(
            session=gateway.session,
            base_url=self.settings.myfatoorah_url,
            token=self.settings.token or None,
            timeout_seconds=self.settings.myfatoorah_timeout_seconds,
        )
        self._confirmer = Confirmer(gateway=gateway, client=self._client, rules=self.rules)
        gateway.provide(BILLING, BillingService(database=gateway.database))

    @hookimpl
    def resayil_routes(self, gateway: Gateway) -> list[BaseRoute]:
        return [*routes(self), *admin_routes(self)]

    @hookimpl
    def resayil_migrations(self) -> str:
        return str(Path(__file__).parent / "migrations")

    @hookimpl
    def resayil_event_types(self) -> list[type[Event]]:
        return [*BILLING_EVENTS, *LIFECYCLE_EVENTS]

    @hookimpl
    def resayil_jobs(self, gateway: Gateway) -> list[Job]:
        s = self.settings
        return [
            Job("billing.pending", self._check_pending, every_seconds=s.check_every_seconds),
            Job("billing.renewals", self._renewals, every_seconds=s.renewals_every_seconds),
            Job("billing.reconcile", self._reconcile, daily_at=s.reconcile_at),
        ]

    @hookimpl
    def resayil_commands(self) -> list[Command]:
        """`billing reconcile`: the reconciliation now, exit 1 on any mismatch."""
        return [reconcile.command(self)]

    @hookimpl
    def resayil_config_notes(self, config: GatewayConfig) -> list[str]:
        notes = [] if self.settings.token else [NOT_CONFIGURED]
        if self.settings.token and not self.settings.webhook_secret:
            notes.append("no webhook secret: set RESAYIL_MYFATOORAH_WEBHOOK_SECRET, or every webhook answers 401")
        return notes

    async def _check_pending(self, gateway: Gateway) -> None:
        await pending.check_pending(self)

    async def _renewals(self, gateway: Gateway) -> None:
        await renewals.run(self)

    async def _reconcile(self, gateway: Gateway) -> None:
        s = self.settings
        await reconcile.reconcile(self, days=s.reconcile_days, max_calls=s.max_reconcile_calls)

    async def refund_event(self, event: Webhook) -> str:
        return await refunds.refund_event(self, event)

    async def check_soon(self, reference: str) -> None:
        await pending.check_soon(self, reference)
