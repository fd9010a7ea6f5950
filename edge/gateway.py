"""The gateway object: configuration, the hook chain and the shared pools, opened and closed together.

One Gateway per app instance; plugins get it in `resayil_startup` and keep what they need.
"""

from __future__ import annotations

import asyncio
import logging
import zoneinfo
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar

import aiohttp
import pluggy
import redis.asyncio as aioredis

from edge import defaults, jobs
from edge.chain import Chain, build_manager
from edge.clock import SYSTEM, Clock
from edge.config import GatewayConfig
from edge.context import Model, Upstream
from edge.db import Database, redact
from edge.events import EventTypes
from edge.outbox import Outbox
from edge.proxy import open_session
from edge.services import MissingService, Service
from edge.settings import ConfigError

log = logging.getLogger("resayil.gateway")
T = TypeVar("T")


def catalogue(config: GatewayConfig) -> tuple[dict[str, Upstream], dict[str, Model]]:
    upstreams = {name: Upstream(name, settings) for name, settings in config.upstreams.items()}
    hidden = set(config.hidden_models)
    models = {m.name: Model(m.name, upstreams[m.upstream], m) for m in config.models if m.name not in hidden}
    return upstreams, models


class Gateway:
    """Holds what every request and plugin shares. Pools open in `start` and close in `stop`."""

    def __init__(self, config: GatewayConfig, *, plugins: Iterable[object] = (), clock: Clock = SYSTEM) -> None:
        self.config = config
        self.clock = clock
        self.pm: pluggy.PluginManager = build_manager(config, defaults=defaults.default_plugins(config), extra=plugins)
        self.chain = Chain(self.pm)
        self.upstreams, self.models = catalogue(config)
        self.hidden_models = frozenset(config.hidden_models)
        self.tz = zoneinfo.ZoneInfo(config.timezone)
        self.jobs = jobs.collect(self)
        # Domain events: `await gateway.events.publish(event, conn=conn)` (edge/outbox.py).
        self.events = Outbox(self, EventTypes(self.chain.call("resayil_event_types")), config.events)
        self._runner: jobs.JobRunner | None = None
        self.db: Database | None = None
        self.redis: aioredis.Redis | None = None
        self.http: aiohttp.ClientSession | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._services: dict[Service[Any], Any] = {}
        self.started = False

    @property
    def database(self) -> Database:
        if self.db is None:
            raise RuntimeError("the gateway has not started")
        return self.db

    @property
    def session(self) -> aiohttp.ClientSession:
        if self.http is None:
            raise RuntimeError("the gateway has not started")
        return self.http

    def plugin(self, name: str) -> Any:
        """A plugin object by name, for tests and inspection. Plugin code asks for a service instead
        (tests/test_plugin_boundaries.py holds it to that)."""
        return self.pm.get_plugin(name)

    # ---- services (edge/services.py) ----------------------------------------------------------------------

    def provide(self, key: Service[T], impl: T) -> None:
        """Offer `impl` as the service `key` (the owning plugin, in `resayil_startup`). A second provider
        of the same service stops startup: which one answered would depend on the plugins' order."""
        if key in self._services:
            raise ConfigError(f"two plugins provide the {key.name!r} service")
        self._services[key] = impl

    def service(self, key: Service[T]) -> T:
        """The provided service, else its core default; MissingService when there is neither."""
        found = self.maybe(key)
        if found is None:
            raise MissingService(key)
        return found

    def maybe(self, key: Service[T]) -> T | None:
        """The provided service, else its core default, else None."""
        found: T | None = self._services.get(key, key.default)
        return found

    async def start(self, *, run_jobs: bool = True) -> None:
        """Open the pools, run every `resayil_startup`, then start the jobs' schedules (unless `run_jobs` is
        False: a CLI command runs in a gateway of its own and leaves scheduled work to the servers)."""
        self.db = Database(self.config.database_url)
        if self.config.redis_url:
            self.redis = aioredis.Redis.from_url(
                self.config.redis_url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=30
            )
        self.http = open_session(connect_timeout=self.config.timeouts.connect_seconds)
        failures = await self.chain.all("resayil_startup", gateway=self)
        if failures:
            await self.stop()
            raise failures[0]
        if run_jobs and self.jobs:
            self._runner = jobs.JobRunner(self.jobs, gateway=self, redis=self.redis, tz=self.tz)
            self._runner.start()
        self.started = True
        log.info(
            "gateway ready",
            extra={"fields": {"database": redact(self.config.database_url), "plugins": self.plugin_names()}},
        )

    async def stop(self) -> None:
        try:
            if self._runner is not None:
                await self._runner.stop()  # first: a job may use what the shutdown hooks close
                self._runner = None
            # Background work spawns more (a settlement's event is delivered by a task its commit spawns): wait
            # until none is left, or a task would use the pools after they close and outlive the event loop.
            await self.drain()
            await self.chain.all("resayil_shutdown", gateway=self)
            await self.drain()
            self._services.clear()
            if self.http is not None:
                await self.http.close()
            if self.redis is not None:
                await self.redis.aclose()
        finally:
            # Whatever failed above: on SQLite an unclosed pool's worker threads outlive the event loop.
            if self.db is not None:
                await self.db.close()
            self.started = False

    def plugin_names(self) -> list[str]:
        return [name for name, _ in self.pm.list_name_plugin() if not name.startswith("default.")]

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run work off the request path; `stop` waits for it."""
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def drain(self) -> None:
        """Wait for background work (tests use it to observe effects deterministically)."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)
