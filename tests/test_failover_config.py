"""Failover settings: the environment tunes them through the example config; bad values stop startup."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from edge import config as config_module
from edge.app import create_app
from edge.settings import ConfigError
from tests.support.failover import failover_config

# The entry proposed for config/gateway.example.yaml's `plugins:` list.
EXAMPLE_ENTRY = """
- name: failover
  settings:
    spill_depth: ${RESAYIL_SPILL_DEPTH:-3}
    cloud_daily_cap: ${RESAYIL_CLOUD_DAILY_CAP:-500}
    queue_max_wait_seconds: ${RESAYIL_QUEUE_MAX_WAIT_S:-120}
"""


def example_with_failover(env: dict[str, str]) -> Any:
    data = yaml.safe_load(config_module.DEFAULT_CONFIG.read_text(encoding="utf-8"))
    data["plugins"] = [p for p in data["plugins"] or [] if p.get("name") != "failover"]
    data["plugins"].append(yaml.safe_load(EXAMPLE_ENTRY)[0])
    return create_app(config_module.parse(data, env=env)).gateway


def test_the_example_config_reads_its_queue_settings_from_the_environment() -> None:
    defaults = example_with_failover({}).plugin("failover").settings
    assert (defaults.spill_depth, defaults.cloud_daily_cap, defaults.queue_max_wait_seconds) == (3, 500, 120)
    gateway = example_with_failover(
        {
            "RESAYIL_SPILL_DEPTH": "5",
            "RESAYIL_CLOUD_DAILY_CAP": "50",
            "RESAYIL_QUEUE_MAX_WAIT_S": "30",
            "RESAYIL_OLLAMA_PARALLEL": "2",
        }
    )
    tuned = gateway.plugin("failover").settings
    assert (tuned.spill_depth, tuned.cloud_daily_cap, tuned.queue_max_wait_seconds) == (5, 50, 30)
    assert gateway.upstreams["ollama"].settings.parallel == 2


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("spill_depth", -1, "plugins.failover.settings.spill_depth: must be 0 or more"),
        ("queue_max_wait_seconds", 0, "plugins.failover.settings.queue_max_wait_seconds: must be more than 0"),
        ("retry_attempts", 0, "retry_attempts and down_after_failures must be 1 or more"),
        ("answer_retries", -1, "plugins.failover.settings.answer_retries: must be 0 or more"),
        ("down_after_accounts", 1, "plugins.failover.settings.down_after_accounts: must be 2 or more"),
        ("down_window_seconds", 0, "plugins.failover.settings.down_window_seconds: must be more than 0"),
        ("probe_timeout_seconds", 0, "plugins.failover.settings.probe_timeout_seconds: must be more than 0"),
        ("spill_threshold", 3, "plugins.failover.settings.spill_threshold: unknown key"),
        ("cloud_daily_cap", "many", "plugins.failover.settings.cloud_daily_cap: expected a whole number"),
    ],
)
def test_bad_settings_stop_startup_naming_the_key(setting: str, value: Any, message: str) -> None:
    config = failover_config(
        ollama_url="http://127.0.0.1:9",
        cloud_url="http://127.0.0.1:9",
        database_url="sqlite+aiosqlite:///unused.db",
        redis_url=None,
        **{setting: value},
    )
    with pytest.raises(ConfigError, match=message):
        create_app(config_module.parse(config, env={}))
