"""Configuration: environment defaults, and a bad config stopping startup with exit 2 and one clear line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge import config as config_module
from edge.settings import ConfigError
from tests.conftest import ROOT, base_config


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("RESAYIL_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "edge", *args],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_example_config_defaults_and_environment() -> None:
    config = config_module.load(env={})
    assert config.database_url == "sqlite+aiosqlite:///var/resayil.db"
    assert config.redis_url is None
    assert (config.server.host, config.server.port) == ("127.0.0.1", 8000)
    assert config.upstreams["ollama"].base_url == "http://127.0.0.1:11434/v1"
    assert config.upstreams["cloud"].api_key is None
    assert {m.name for m in config.models} == {
        "llama3.2:3b",
        "qwen2.5-coder:14b",
        "qwen3:30b",
        "deepseek-v3.1:671b-cloud",
        "qwen3-embedding:0.6b",
    }
    assert set(config.hidden_models) == {"glm-4.7-flash", "bge-m3", "nomic-embed-text"}
    assert (config.tiers["basic"].price_fils, config.tiers["pro"].monthly_credits) == (2500, 5000)
    assert config.api.max_body_bytes == 64 * 1024
    env = {
        "RESAYIL_DATABASE_URL": "mysql+aiomysql://u:p@db:3306/r",
        "RESAYIL_REDIS_URL": "redis://r:6379/0",
        "RESAYIL_OLLAMA_URL": "http://gpu:11434",
        "RESAYIL_CLOUD_URL": "https://cloud.example/v1",
        "RESAYIL_CLOUD_API_KEY": "k-123",
        "RESAYIL_HOST": "0.0.0.0",
        "RESAYIL_PORT": "9000",
        "RESAYIL_PUBLIC_URL": "https://llm.example.kw",
    }
    config = config_module.load(env=env)
    assert config.database_url == "mysql+aiomysql://u:p@db:3306/r"
    assert config.redis_url == "redis://r:6379/0"
    assert config.upstreams["ollama"].base_url == "http://gpu:11434/v1"
    assert (config.upstreams["cloud"].base_url, config.upstreams["cloud"].api_key) == (
        "https://cloud.example/v1",
        "k-123",
    )
    assert (config.server.host, config.server.port, config.server.public_url) == (
        "0.0.0.0",
        9000,
        "https://llm.example.kw",
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["server"].update(prot=1), "server.prot: unknown key"),
        (lambda c: c["server"].update(port="eighty"), "server.port: expected a whole number"),
        (lambda c: c["timeouts"].update(idle_seconds=[1]), "timeouts.idle_seconds: expected a number"),
        # A duration's name ends in its unit: an old name is refused with the new one.
        (lambda c: c["timeouts"].update(idle=5), "timeouts.idle: renamed to idle_seconds"),
        (
            lambda c: c["plugins"].append({"name": "failover", "settings": {"down_window_s": 30}}),
            "plugins.failover.settings.down_window_s: renamed to down_window_seconds",
        ),
        (lambda c: c["models"][0].update(upstream="gpu9"), "models[0].upstream: no upstream named 'gpu9'"),
        (lambda c: c["models"][0].update(**{"class": "huge"}), "models[0].class: must be one of"),
        (lambda c: c["server"].update(workers=2), "server.workers: more than one worker needs shared state"),
        (lambda c: c.update(database_url="postgres://x"), "database_url: must start with"),
        (lambda c: c.update(api={"max_body_bytes": 1023}), "api.max_body_bytes: must be at least 1024"),
        (
            lambda c: c["plugins"].append({"name": "auth_keys", "settings": {"max_body_bytes": 65536}}),
            "plugins.auth_keys.settings.max_body_bytes: moved to the gateway's `api.max_body_bytes`",
        ),
        (lambda c: c["plugins"].append({"name": "nope"}), "plugins.nope: no plugin module 'plugins.nope'"),
        (
            lambda c: c["plugins"].append(
                {"name": "s", "module": "tests.support.sample_plugin", "settings": {"colour": 1}}
            ),
            "plugins.s.settings.colour: unknown key",
        ),
        (
            lambda c: c["plugins"].append(
                {
                    "name": "n",
                    "module": "tests.support.secret_plugin",
                    "settings": {"api_token": "${RESAYIL_TEST_TOKEN}"},
                }
            ),
            "plugins.n.settings.api_token: required, but the environment variable RESAYIL_TEST_TOKEN is not set",
        ),
    ],
)
def test_bad_config_stops_with_exit_2_naming_the_key(tmp_path: Path, change: Any, message: str) -> None:
    cfg = base_config(ollama_url="http://127.0.0.1:11434", database_url=f"sqlite+aiosqlite:///{tmp_path}/x.db")
    change(cfg)
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    result = run_cli("check-config", env={"RESAYIL_CONFIG": str(path)})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("config error: ")
    assert message in lines[0]
    assert "Traceback" not in result.stderr


def test_secret_from_the_environment_is_accepted_and_never_printed(tmp_path: Path) -> None:
    cfg = base_config(ollama_url="http://127.0.0.1:11434", database_url=f"sqlite+aiosqlite:///{tmp_path}/x.db")
    cfg["plugins"].append(
        {
            "name": "n",
            "module": "tests.support.secret_plugin",
            "settings": {"api_token": "${RESAYIL_TEST_TOKEN}"},
        }
    )
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = run_cli("check-config", env={"RESAYIL_CONFIG": str(path), "RESAYIL_TEST_TOKEN": "s3cr3t-value"})
    assert result.returncode == 0, result.stderr
    assert "s3cr3t-value" not in result.stdout + result.stderr


def test_more_than_one_worker_with_in_process_state_is_refused() -> None:
    result = run_cli("serve", "--workers", "2")
    assert result.returncode == 2
    assert "more than one worker needs shared state" in result.stderr


def test_invalid_yaml_and_missing_file_are_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("server: [unclosed\n")
    assert run_cli("check-config", env={"RESAYIL_CONFIG": str(bad)}).returncode == 2
    assert run_cli("--config", str(tmp_path / "missing.yaml"), "check-config").returncode == 2


def test_interpolation_keeps_types_and_text() -> None:
    data = {"a": "${N:-4}", "b": "x-${N:-4}-y", "c": "${FLAG:-true}", "d": "${EMPTY:-}", "e": "${U}"}
    out = config_module.interpolate(data, {"U": "http://h:1/v1"})
    assert out["a"] == 4 and out["b"] == "x-4-y" and out["c"] is True and out["d"] is None
    assert out["e"] == "http://h:1/v1"
    with pytest.raises(ConfigError):
        config_module.parse({"server": {"port": "${MISSING_PORT}"}}, env={})
