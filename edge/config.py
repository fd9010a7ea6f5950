"""The gateway's configuration: YAML with `${VAR:-default}` from the environment, checked into dataclasses."""

from __future__ import annotations

import ipaddress
import os
import re
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from edge.settings import ConfigError, Missing, build

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config" / "gateway.example.yaml"
_VAR = re.compile(r"\$\{([A-Z0-9_]+)(?::-([^}]*))?\}")
_WHOLE = re.compile(r"^\$\{([A-Z0-9_]+)(?::-([^}]*))?\}$")


@dataclass
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    public_url: str = "http://127.0.0.1:8000"
    max_body_bytes: int = 4 * 1024 * 1024
    # Without an authentication plugin every /v1 request is refused; open access is for experiments only.
    open_access: bool = False
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Reverse proxies (addresses or networks) whose X-Forwarded-For names the real client.
    trusted_proxies: list[str] = field(default_factory=list)


@dataclass
class ApiSettings:
    """The portal's JSON API (/api): what every plugin's routes share."""

    # Every /api body, whichever plugin reads it (edge/inputs.py); the largest form today is a few KiB.
    max_body_bytes: int = 64 * 1024


@dataclass
class TimeoutSettings:
    connect_seconds: float = 5.0
    # Until the upstream's first byte of a stream (a whole answer's first byte may take `total_seconds`).
    first_byte_seconds: float = 120.0
    # Between two chunks of a stream.
    idle_seconds: float = 60.0
    total_seconds: float = 600.0


@dataclass
class EventSettings:
    """How the outbox (edge/outbox.py) delivers and keeps domain events."""

    dispatch_every_seconds: float = 2.0
    # How long a worker's claim on an event lasts: one that dies while delivering holds it this long.
    lease_seconds: float = 60.0
    consumer_timeout_seconds: float = 20.0
    # A failed delivery is tried again after this, doubling with each failure up to the maximum.
    first_backoff_seconds: float = 2.0
    max_backoff_seconds: float = 3600.0
    batch: int = 50
    # Delivered events are kept this long; undelivered ones until they are delivered.
    retention_days: int = 7


@dataclass
class UpstreamSettings:
    base_url: str
    kind: Literal["local", "cloud"] = "local"
    api_key: str | None = None
    parallel: int = 4
    multiplier: int | None = None

    @property
    def route_multiplier(self) -> int:
        if self.multiplier is not None:
            return self.multiplier
        return 2 if self.kind == "cloud" else 1


@dataclass
class ModelSettings:
    name: str
    upstream: str
    model_class: Literal["local-small", "local-medium", "local-large", "cloud", "embedding"] = field(
        default="local-small", metadata={"key": "class"}
    )
    upstream_model: str | None = None
    multiplier: int | None = None
    max_completion_tokens: int = 2048
    fallback: str | None = None
    owned_by: str = "resayil"


@dataclass
class TierSettings:
    """A plan: what it costs, what it includes, how fast it may go. Shared by every business plugin."""

    label_ar: str
    label_en: str
    price_fils: int
    monthly_credits: int
    requests_per_minute: int
    model_classes: list[str]
    tokens_per_minute: int | None = None
    cloud: bool = False
    # Higher waits less in the local queue.
    priority: int = 0


@dataclass
class PluginEntry:
    name: str
    enabled: bool = True
    module: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class GatewayConfig:
    server: ServerSettings = field(default_factory=ServerSettings)
    database_url: str = "sqlite+aiosqlite:///var/resayil.db"
    redis_url: str | None = None
    api: ApiSettings = field(default_factory=ApiSettings)
    timeouts: TimeoutSettings = field(default_factory=TimeoutSettings)
    events: EventSettings = field(default_factory=EventSettings)
    upstreams: dict[str, UpstreamSettings] = field(default_factory=dict)
    models: list[ModelSettings] = field(default_factory=list)
    hidden_models: list[str] = field(default_factory=list)
    tiers: dict[str, TierSettings] = field(default_factory=dict)
    # Where an account whose plan has expired falls back to until renewed.
    fallback_tier: str = "basic"
    # The calendar daily jobs run in (edge/jobs.py).
    timezone: str = "Asia/Kuwait"
    plugins: list[PluginEntry] = field(default_factory=list)

    def check(self) -> None:
        """Cross-field rules that a type cannot say."""
        if self.server.workers < 1:
            raise ConfigError("server.workers: must be at least 1")
        if self.server.workers > 1 and not self.redis_url:
            raise ConfigError(
                "server.workers: more than one worker needs shared state; set redis_url (RESAYIL_REDIS_URL)"
            )
        for i, item in enumerate(self.server.trusted_proxies):
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ConfigError(f"server.trusted_proxies[{i}]: not an address or network: {item!r}") from None
        e = self.events
        if not 0 < e.dispatch_every_seconds <= 3600 or not 0 < e.consumer_timeout_seconds < e.lease_seconds:
            raise ConfigError(
                "events: dispatch_every_seconds must be 0-3600, and consumer_timeout_seconds positive and below "
                "lease_seconds"
            )
        if not 0 < e.first_backoff_seconds <= e.max_backoff_seconds or not 1 <= e.batch <= 1000 or e.retention_days < 1:
            raise ConfigError(
                "events: backoff must be positive (first no more than max), batch 1-1000, retention_days at least 1"
            )
        if self.server.max_body_bytes < 1024:
            raise ConfigError("server.max_body_bytes: must be at least 1024")
        if self.api.max_body_bytes < 1024:
            raise ConfigError("api.max_body_bytes: must be at least 1024")
        if not self.database_url.startswith(("sqlite+aiosqlite://", "mysql+aiomysql://")):
            raise ConfigError("database_url: must start with sqlite+aiosqlite:// or mysql+aiomysql://")
        for name, upstream in self.upstreams.items():
            if not upstream.base_url.startswith(("http://", "https://")):
                raise ConfigError(f"upstreams.{name}.base_url: must be an http(s) URL")
            if upstream.parallel < 1:
                raise ConfigError(f"upstreams.{name}.parallel: must be at least 1")
        names = set()
        for i, model in enumerate(self.models):
            if model.upstream not in self.upstreams:
                raise ConfigError(f"models[{i}].upstream: no upstream named {model.upstream!r}")
            if model.name in names:
                raise ConfigError(f"models[{i}].name: {model.name!r} is listed twice")
            if model.max_completion_tokens < 1:
                raise ConfigError(f"models[{i}].max_completion_tokens: must be at least 1")
            names.add(model.name)
        for i, model in enumerate(self.models):
            if model.fallback is not None and model.fallback not in names:
                raise ConfigError(f"models[{i}].fallback: no model named {model.fallback!r}")
        classes = {"local-small", "local-medium", "local-large", "cloud", "embedding"}
        for name, tier in self.tiers.items():
            unknown = set(tier.model_classes) - classes
            if unknown:
                raise ConfigError(f"tiers.{name}.model_classes: unknown class {sorted(unknown)[0]!r}")
            if tier.price_fils < 0 or tier.monthly_credits < 0 or tier.requests_per_minute < 1:
                raise ConfigError(f"tiers.{name}: price, credits and requests_per_minute must be positive")
        if self.tiers and self.fallback_tier not in self.tiers:
            raise ConfigError(f"fallback_tier: no tier named {self.fallback_tier!r}")
        try:
            zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"timezone: unknown time zone {self.timezone!r}") from None
        seen = set()
        for i, plugin in enumerate(self.plugins):
            if plugin.name in seen:
                raise ConfigError(f"plugins[{i}].name: {plugin.name!r} is listed twice")
            seen.add(plugin.name)


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Replace `${VAR}` and `${VAR:-default}` in every string; a whole-value reference keeps YAML's type."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str) or "${" not in value:
        return value
    whole = _WHOLE.match(value)
    if whole:
        var, default = whole.group(1), whole.group(2)
        raw = env.get(var) or default
        if raw is None:
            return Missing(var)
        if raw == "":
            return None
        return _scalar(raw)

    def one(match: re.Match[str]) -> str:
        return env.get(match.group(1)) or match.group(2) or ""

    return _VAR.sub(one, value)


def _scalar(raw: str) -> Any:
    """`"8000"` from the environment becomes 8000 and `"true"` becomes True; anything else stays text."""
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    return value if isinstance(value, (bool, int, float)) else raw


def parse(data: Any, env: dict[str, str] | None = None) -> GatewayConfig:
    """Check raw config data (as from YAML) into a GatewayConfig, or raise ConfigError."""
    data = interpolate(data, dict(os.environ) if env is None else env)
    config = build(GatewayConfig, data, "")
    config.check()
    return config


def load(path: str | os.PathLike[str] | None = None, env: dict[str, str] | None = None) -> GatewayConfig:
    """Load the file named by `path`, else RESAYIL_CONFIG, else the example config."""
    environ = dict(os.environ) if env is None else env
    where = Path(path or environ.get("RESAYIL_CONFIG") or DEFAULT_CONFIG)
    try:
        text = where.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"config file {where}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {where}: not valid YAML ({exc})") from None
    return parse(data, environ)
