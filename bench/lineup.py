"""The targets one `make bench` run measures, in order: the fake alone, our gateway's variants, LiteLLM.

Each is data (see bench/targets.py): another gateway variant is one more `EdgeGateway` entry.
"""

from __future__ import annotations

from typing import Any

from bench.accounts import Customer
from bench.litellm import VERSION as LITELLM_VERSION
from bench.litellm import LiteLLM
from bench.targets import ROOT, Direct, EdgeGateway, Target

EXAMPLE = ROOT / "config" / "gateway.example.yaml"
# Raised so the load is measured, not refused: every plan's rate limits, and the local upstream's slots
# (the failover plugin queues beyond them, as it would in production).
BENCH_ENVIRON = {"RESAYIL_OLLAMA_PARALLEL": "64", "RESAYIL_LOG_LEVEL": "warning", "RESAYIL_CLOUD_API_KEY": "bench"}


def raise_limits(config: dict[str, Any]) -> None:
    for tier in config["tiers"].values():
        tier["requests_per_minute"] = 10**9
        tier.pop("tokens_per_minute", None)


def only_auth(config: dict[str, Any]) -> None:
    config["plugins"] = [p for p in config["plugins"] if p["name"] == "auth_keys"]


# The two chains measured against LiteLLM run as production would: the example config, two workers
# sharing both CPUs with their load, MariaDB and Redis.
PRODUCTION_LIKE: dict[str, Any] = {
    "config": EXAMPLE,
    "workers": 2,
    "mariadb": True,
    "environ": BENCH_ENVIRON,
    "serve_on": "any",
    "load_on": "any",
}

TARGETS: tuple[Target, ...] = (
    Direct("direct", "fake Ollama, no gateway"),
    EdgeGateway("minimal", "gateway, bare core (open access, no plugins), 1 worker"),
    EdgeGateway(
        "auth",
        "gateway, API-key auth only (auth_keys), 2 workers, MariaDB + Redis",
        patch=only_auth,
        redis_db=14,
        prepare=Customer(tier=None, credits_milli=0),
        **PRODUCTION_LIKE,
    ),
    EdgeGateway(
        "full",
        "gateway, full chain as the example config ships it, limits raised, 2 workers, MariaDB + Redis",
        patch=raise_limits,
        redis_db=15,
        prepare=Customer(),
        reconcile=True,
        **PRODUCTION_LIKE,
    ),
    LiteLLM("litellm", f"LiteLLM {LITELLM_VERSION} proxy, master key only, no database, 2 workers"),
)
