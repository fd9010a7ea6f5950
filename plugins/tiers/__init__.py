"""Plans decide models: which tier applies to a caller and which models that tier may use."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from starlette.routing import BaseRoute, Route

from edge.context import Model, RequestContext
from edge.hookspecs import hookimpl
from edge.settings import ConfigError
from plugins.tiers import rules
from plugins.tiers.admin import account_route
from plugins.tiers.plans import plans_route

if TYPE_CHECKING:
    from edge.gateway import Gateway


class Plugin:
    """Applies the caller's plan: an expired plan falls back to `fallback_tier`, a model outside the plan
    is refused with 403 `model_not_in_plan`, and `/v1/models` lists only what the plan includes.

    Hidden models never reach this plugin: the core answers them 404 `model_not_found`, like a model that
    does not exist. Routes: `GET /api/plans` (public), `PATCH /api/admin/accounts/{id}` (admins).
    """

    @hookimpl
    async def resayil_startup(self, gateway: Gateway) -> None:
        """Keep the gateway; the plan rules need `tiers:` in the config."""
        if not gateway.config.tiers:
            raise ConfigError("plugins.tiers: the config has no `tiers:` to apply")
        self.gateway = gateway

    @hookimpl
    async def resayil_authorize(self, ctx: RequestContext) -> None:
        """Swap in the effective principal (later plugins see the tier that applies), then refuse a model
        the plan does not include."""
        principal = ctx.principal
        if principal is None:
            return
        config = self.gateway.config
        applied = rules.effective(principal, config=config, now=time.time())
        ctx.principal = applied
        model = ctx.model
        tier = config.tiers[applied.tier]
        if model is not None and not rules.may_use(tier, model):
            lapsed = config.tiers.get(principal.tier) if applied.tier != principal.tier else None
            raise rules.not_in_plan(model, tier=tier, tiers=config.tiers, locale=principal.locale, expired=lapsed)

    @hookimpl
    async def resayil_models(self, ctx: RequestContext, models: list[Model]) -> list[Model] | None:
        """Only the models the caller's (effective) plan includes."""
        if ctx.principal is None:
            return None
        tier = self.gateway.config.tiers[
            rules.effective(ctx.principal, config=self.gateway.config, now=time.time()).tier
        ]
        return rules.visible(models, tier)

    @hookimpl
    def resayil_routes(self, gateway: Gateway) -> list[BaseRoute]:
        """`GET /api/plans` for everyone; `PATCH /api/admin/accounts/{id}` for admins (the `GUARDS` and
        `ACCOUNTS` services; without a plugin providing guards it answers 401 like any admin route)."""
        return [
            Route("/api/plans", plans_route(gateway), methods=["GET"]),
            Route("/api/admin/accounts/{account_id:int}", account_route(gateway), methods=["PATCH"]),
        ]
