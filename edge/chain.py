"""The hook chain: one pluggy manager per app, and the async runner that awaits each implementation.

pluggy calls hooks synchronously and does not await coroutines, so for async hooks the order is taken
from pluggy once at startup and the implementations are awaited here, one after another.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import pluggy

from edge import hookspecs
from edge.config import GatewayConfig
from edge.settings import ConfigError, build

log = logging.getLogger("resayil.chain")
# The names the built-in defaults are registered under.
DEFAULT_PREFIX = "default."

Impl = tuple[Callable[..., Awaitable[Any]], tuple[str, ...], str]


class Chain:
    """Runs hooks in pluggy's order: first result, each until one raises, or all with failures collected."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self._impls: dict[str, tuple[Impl, ...]] = {}
        for name in hookspecs.ASYNC_HOOKS:
            caller = getattr(pm.hook, name)
            ordered = reversed(caller.get_hookimpls())
            self._impls[name] = tuple((impl.function, tuple(impl.argnames), impl.plugin_name) for impl in ordered)

    def implementations(self, name: str) -> tuple[str, ...]:
        return tuple(plugin for _, _, plugin in self._impls[name])

    async def first(self, hook: str, /, **kwargs: Any) -> Any:
        for fn, args, _ in self._impls[hook]:
            result = await fn(**{a: kwargs[a] for a in args})
            if result is not None:
                return result
        return None

    async def each(self, hook: str, /, **kwargs: Any) -> None:
        for fn, args, _ in self._impls[hook]:
            await fn(**{a: kwargs[a] for a in args})

    async def all(self, hook: str, /, **kwargs: Any) -> list[BaseException]:
        """Run every implementation; log and return failures instead of stopping."""
        failures: list[BaseException] = []
        for fn, args, plugin in self._impls[hook]:
            try:
                await fn(**{a: kwargs[a] for a in args})
            except Exception as exc:
                log.exception("hook %s failed in plugin %s", hook, plugin)
                failures.append(exc)
        return failures

    async def each_plugin(
        self, hook: str, /, *, skip: frozenset[str], within_seconds: float, **kwargs: Any
    ) -> dict[str, BaseException | None]:
        """Run every implementation but those of the plugins in `skip`, each within `within_seconds`; return
        each plugin's failure (logged), or None where it succeeded."""
        outcome: dict[str, BaseException | None] = {}
        for fn, args, plugin in self._impls[hook]:
            if plugin in skip:
                continue
            try:
                async with asyncio.timeout(within_seconds):
                    await fn(**{a: kwargs[a] for a in args})
            except Exception as exc:
                log.exception("hook %s failed in plugin %s", hook, plugin)
                outcome[plugin] = exc
            else:
                outcome[plugin] = None
        return outcome

    async def collect(self, hook: str, /, **kwargs: Any) -> list[Any]:
        """Run every implementation and return the non-None results; failures are logged and skipped."""
        results = []
        for fn, args, plugin in self._impls[hook]:
            try:
                result = await fn(**{a: kwargs[a] for a in args})
            except Exception:
                log.exception("hook %s failed in plugin %s", hook, plugin)
                continue
            if result is not None:
                results.append(result)
        return results

    async def pipe(self, hook: str, /, *, value_arg: str, value: Any, **kwargs: Any) -> Any:
        """Hand `value` through every implementation in turn; a non-None result replaces it for the next."""
        for fn, args, _ in self._impls[hook]:
            given = {**kwargs, value_arg: value}
            result = await fn(**{a: given[a] for a in args})
            if result is not None:
                value = result
        return value

    def call(self, hook: str, /, **kwargs: Any) -> list[Any]:
        """A synchronous hook through pluggy itself (routes, migrations, commands)."""
        return list(getattr(self.pm.hook, hook)(**kwargs))


def load_plugin(name: str, module: str | None, settings: dict[str, Any]) -> object:
    """Import `plugins.<name>` (or `module`) and build its `Plugin` class from its settings section."""
    path = module or f"plugins.{name}"
    try:
        mod = importlib.import_module(path)
    except ModuleNotFoundError as exc:
        if exc.name and path.startswith(exc.name):
            raise ConfigError(f"plugins.{name}: no plugin module {path!r}") from None
        raise
    cls = getattr(mod, "Plugin", None)
    if cls is None:
        raise ConfigError(f"plugins.{name}: module {path!r} has no Plugin class")
    settings_cls = getattr(cls, "Settings", None)
    if settings_cls is None:
        if settings:
            raise ConfigError(f"plugins.{name}.settings: this plugin takes no settings")
        return cls()
    return cls(build(settings_cls, settings, f"plugins.{name}.settings"))


def build_manager(
    config: GatewayConfig, *, defaults: Iterable[object], extra: Iterable[object] = ()
) -> pluggy.PluginManager:
    """Register the configured plugins from the last listed to the first (so the first listed runs first),
    then extras, then the defaults: pluggy runs a later registered `trylast` implementation after the
    earlier ones, so the defaults, all `trylast`, run after everything (the order: `edge/hookspecs.py`)."""
    pm = pluggy.PluginManager("resayil")
    pm.add_hookspecs(hookspecs)
    enabled = [entry for entry in config.plugins if entry.enabled]
    for entry in reversed(enabled):
        pm.register(load_plugin(entry.name, entry.module, entry.settings), name=entry.name)
    for plugin in extra:
        pm.register(plugin, name=getattr(plugin, "name", None) or type(plugin).__name__)
    for plugin in defaults:
        pm.register(plugin, name=f"{DEFAULT_PREFIX}{type(plugin).__name__}")
    check_manager(pm)
    check_order(pm)
    return pm


def check_manager(pm: pluggy.PluginManager) -> None:
    """Refuse unknown hook names and request-path implementations that are not coroutines."""
    known = set(pm.hook.__dict__)
    for plugin_name, plugin in pm.list_name_plugin():
        for attr in dir(plugin):
            if attr.startswith("resayil_") and attr not in known:
                raise ConfigError(f"plugin {plugin_name!r}: unknown hook {attr!r}")
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise ConfigError(f"plugin {exc.plugin!r}: {exc}") from None
    for name in hookspecs.ASYNC_HOOKS:
        for impl in getattr(pm.hook, name).get_hookimpls():
            if not inspect.iscoroutinefunction(impl.function):
                raise ConfigError(f"plugin {impl.plugin_name!r}: {name} must be an async def")


def check_order(pm: pluggy.PluginManager) -> None:
    """Refuse an order the edge depends on and does not have: a default that would run before a plugin's
    implementation of the same hook (that implementation could no longer override it), or more than one
    `resayil_admit` (one that refused after another ran a claim would leave the claim taken, unsettled)."""
    for name in pm.hook.__dict__:
        if not name.startswith("resayil_"):
            continue
        order = [impl.plugin_name for impl in reversed(getattr(pm.hook, name).get_hookimpls())]
        seen_default = None
        for plugin in order:
            if plugin.startswith(DEFAULT_PREFIX):
                seen_default = seen_default or plugin
            elif seen_default is not None:
                raise ConfigError(
                    f"plugin {plugin!r}: its {name} would run after the built-in {seen_default!r}, which must "
                    "run last so that any plugin can override it"
                )
    admits = [impl.plugin_name for impl in pm.hook.resayil_admit.get_hookimpls()]
    if len(admits) > 1:
        raise ConfigError(
            f"plugins {', '.join(map(repr, sorted(admits)))}: only one plugin may implement resayil_admit, the "
            "last check before reserve that runs other plugins' Redis claims; use resayil_authorize for the others"
        )
