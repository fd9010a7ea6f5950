"""The whole plugin contract. A plugin is a class whose methods carry `@hookimpl` and these names.

Request-path hooks are `async def`; the edge awaits each implementation in pluggy's order, which is:
1. `tryfirst` implementations, the plugin listed first in the config first;
2. plain implementations, the plugin listed first in the config first;
3. `trylast` implementations in the REVERSE of the config's order: the plugin listed last runs first
   (pluggy puts each newly registered `trylast` implementation at the very end, and the config's plugins
   are registered from the last listed to the first);
4. the built-in defaults (`edge/defaults.py`), registered after everything else, all `trylast`, so they
   run after every other implementation of their hook.
Extra plugins handed to `create_app` (tests) are registered after the configured ones: within each group
they run before them. Startup refuses an order the core depends on and does not get (`edge/chain.py`:
the defaults last, one `resayil_admit`). A hook vetoes by raising an `edge.errors.GatewayError`, never
by returning a magic value.

The request path: authenticate, authorize, admit (where another plugin's Redis claim may run), then
reserve, route and forward, and settle exactly once whenever admit let the request through.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from starlette.routing import BaseRoute

    from edge.claims import RedisClaim
    from edge.cli import Command
    from edge.config import GatewayConfig
    from edge.context import Model, Principal, RequestContext
    from edge.errors import UpstreamFailure
    from edge.events import Event
    from edge.gateway import Gateway
    from edge.jobs import Job

hookspec = pluggy.HookspecMarker("resayil")
hookimpl = pluggy.HookimplMarker("resayil")

# Hooks the edge awaits; their implementations must be coroutine functions (checked at startup).
ASYNC_HOOKS = frozenset(
    {
        "resayil_startup",
        "resayil_shutdown",
        "resayil_authenticate",
        "resayil_authorize",
        "resayil_admit",
        "resayil_reserve",
        "resayil_route",
        "resayil_retry",
        "resayil_settle",
        "resayil_event",
        "resayil_readiness",
        "resayil_models",
    }
)


@hookspec
async def resayil_startup(gateway: Gateway) -> None:
    """Open what the plugin owns (clients, tasks) once the shared pools are open, and `gateway.provide` the
    services it offers other plugins (edge/services.py). Returns nothing."""


@hookspec
async def resayil_shutdown(gateway: Gateway) -> None:
    """Close what `resayil_startup` opened. All run; failures are logged. Returns nothing."""


@hookspec
def resayil_routes(gateway: Gateway) -> list[BaseRoute]:
    """Return Starlette routes for the plugin's JSON API; every path starts with `/api/` (or `/internal/` for a
    tool on the gateway's own host, which the route restricts to loopback itself)."""


@hookspec
def resayil_v1_endpoints(gateway: Gateway) -> dict[tuple[str, str], Any]:
    """Return extra `/v1` endpoints as `{(METHOD, path): async handler(ctx) -> (status, body)}`.

    They run after authenticate, authorize and admit, like the core endpoints, and are never billed.
    """


@hookspec
def resayil_migrations() -> str | None:
    """Return the directory of the plugin's Alembic revisions (their first revision names a branch label)."""


@hookspec
def resayil_commands() -> list[Command]:
    """Return CLI subcommands for `python -m edge` (for example `create-admin`, `reconcile`)."""


@hookspec
def resayil_config_notes(config: GatewayConfig) -> list[str] | None:
    """Return lines `check-config` prints for the operator: what the config leaves switched off (for
    example "payments are not configured"). Not errors: a config with notes still starts."""


@hookspec
def resayil_jobs(gateway: Gateway) -> list[Job]:
    """Return periodic work as `edge.jobs.Job`s: a name, `every_seconds` or `daily_at` ("HH:MM" in the
    config's `timezone`), `run(gateway)`, and `single` (one worker of all runs each due run) or per worker.
    The gateway runs them while it serves; `python -m edge jobs run NAME` runs one by hand.
    """


@hookspec(firstresult=True)
async def resayil_authenticate(ctx: RequestContext) -> Principal | None:
    """Return the caller's Principal, or None to let the next implementation try. First result wins.

    Raise Unauthorized for credentials that are present but wrong. No result at all means 401.
    """


@hookspec
async def resayil_authorize(ctx: RequestContext) -> None:
    """Allow the request by returning, refuse it by raising (403, 404, 429...). May add response headers."""


@hookspec
async def resayil_admit(ctx: RequestContext, claim: RedisClaim | None) -> None:
    """The last check before reserve, once every authorize passed: count the request against a shared
    limit, or refuse it (429, 503). May add response headers. When `claim` is given, run it in the same
    Redis call if the check admits the request and the call is on the gateway's Redis, and tell the claim
    as `edge/claims.py` says; or leave it alone (its plugin then takes its step itself). The edge goes
    straight on to reserve, so a claim that ran is always given back by settle. At most one plugin
    implements this hook (checked at startup): nothing can refuse a request after its claim ran.
    """


@hookspec(firstresult=True)
def resayil_redis_claim(ctx: RequestContext) -> RedisClaim | None:
    """Offer a Redis step this billed request will need, to run inside the `resayil_admit` implementation's
    Redis call (one round trip for both; `edge/claims.py`). The edge asks once every authorize passed, and
    only when some plugin implements `resayil_admit`. A claim that ran is the offering plugin's to give back
    in `settle`, which then always runs. First result wins.
    """


@hookspec
async def resayil_reserve(ctx: RequestContext) -> None:
    """Hold what the request may cost, or raise (402). May lower the completion budget (`ctx.max_tokens`)."""


@hookspec
async def resayil_route(ctx: RequestContext) -> None:
    """Choose ctx.upstream (and ctx.route, ctx.multiplier) if no earlier implementation did, or raise (503)."""


@hookspec(firstresult=True)
async def resayil_retry(ctx: RequestContext, error: UpstreamFailure) -> bool | None:
    """The upstream failed before anything reached the client. Return True to try again: the
    implementation has already chosen ctx.upstream (and route, multiplier) for the next attempt and
    waited any backoff. Return None to let the next implementation decide; no True means `error` is answered.
    Raise a GatewayError to answer with it instead (for example 503 once every upstream is exhausted).
    """


@hookspec
async def resayil_settle(ctx: RequestContext) -> None:
    """Turn holds into charges and release what was taken. Runs exactly once whenever reserve ran:
    after success, client disconnect, upstream failure or cancellation. All run; failures are logged."""


@hookspec
def resayil_event_types() -> list[type[Event]]:
    """Return the `edge.events.Event` dataclasses the plugin publishes (each with its own `event_name`), so
    any worker can read them back from the outbox. The core's are in `edge.events.CORE_EVENTS`."""


@hookspec
async def resayil_event(event: Event) -> None:
    """React to a domain event (`edge/events.py`: a frozen dataclass such as `CreditsLow`), after the
    transaction that published it committed, off the request path. At least once: de-duplicate on
    `event.id`. Order is not guaranteed. Raising (or outlasting `events.consumer_timeout_seconds`) gets
    the event again later, with backoff; the other implementations are not called again for it."""


@hookspec
async def resayil_readiness(gateway: Gateway) -> dict[str, dict[str, Any]] | None:
    """Return `{part: {"ok": bool, ...}}` for /readyz. Any part not ok makes the gateway not ready."""


@hookspec
async def resayil_models(ctx: RequestContext, models: list[Model]) -> list[Model] | None:
    """Return the models this caller may see in GET /v1/models (a filtered `models`), or None to keep it."""
