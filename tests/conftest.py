"""Shared fixtures: real SQLite/MariaDB/Redis, the fake Ollama, and a gateway served in the test's loop."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pymysql
import pytest
import redis as redis_sync
import uvicorn

from edge import config as config_module
from edge import migrate
from edge.app import EdgeApp, create_app
from edge.clock import SYSTEM, Clock
from edge.gateway import Gateway

ROOT = Path(__file__).resolve().parent.parent
MARIADB = dict(host="127.0.0.1", port=3306, user="root", password="")
# Each concurrent test run can take its own Redis database (0-15) so runs do not flush each other.
REDIS_URL = f"redis://127.0.0.1:6379/{int(os.environ.get('RESAYIL_TEST_REDIS_DB', '9'))}"
REQUIRE = os.environ.get("REQUIRE_SERVICES") == "1"


def all_version_locations() -> list[str]:
    return sorted(str(p) for p in ROOT.glob("plugins/*/migrations") if p.is_dir())


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def need(service: str, host: str, port: int) -> None:
    if _reachable(host, port):
        return
    if REQUIRE:
        pytest.fail(f"{service} at {host}:{port} is required (REQUIRE_SERVICES=1) but not reachable")
    pytest.skip(f"{service} at {host}:{port} is not reachable")


# Fails the test that leaves a SQLite connection open after its event loop closed (tests/support/sqlite_guard.py).
pytest_plugins = ["tests.support.sqlite_guard"]


# ---- databases -------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    migrate.upgrade(f"sqlite+aiosqlite:///{path}", all_version_locations())
    return path


@pytest.fixture(scope="session")
def mariadb_database() -> Iterator[str]:
    need("MariaDB", "127.0.0.1", 3306)
    name = f"resayil_test_{os.getpid()}"
    conn = pymysql.connect(**MARIADB, autocommit=True)
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name}")
        cur.execute(f"CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
    url = f"mysql+aiomysql://root@127.0.0.1:3306/{name}"
    migrate.upgrade(url, all_version_locations())
    yield url
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name}")
    conn.close()


def truncate_mariadb(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    conn = pymysql.connect(**MARIADB, database=name, autocommit=True)
    with conn.cursor() as cur:
        cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema=%s", (name,))
        tables = [row[0] for row in cur.fetchall() if row[0] != "alembic_version"]
        cur.execute("SET FOREIGN_KEY_CHECKS=0")
        for table in tables:
            cur.execute(f"TRUNCATE TABLE `{table}`")
        cur.execute("SET FOREIGN_KEY_CHECKS=1")
    conn.close()


@pytest.fixture(params=["sqlite", "mariadb"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A clean, migrated database: a copy of the SQLite template, or the MariaDB test database emptied."""
    if request.param == "sqlite":
        path = tmp_path / "resayil.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite+aiosqlite:///{path}"
    url: str = request.getfixturevalue("mariadb_database")
    truncate_mariadb(url)
    return url


@pytest.fixture
def sqlite_url(tmp_path: Path, sqlite_template: Path) -> str:
    path = tmp_path / "resayil.db"
    shutil.copy(sqlite_template, path)
    return f"sqlite+aiosqlite:///{path}"


@pytest.fixture
def redis_url() -> str:
    need("Redis", "127.0.0.1", 6379)
    client = redis_sync.Redis.from_url(REDIS_URL)
    client.flushdb()
    client.close()
    return REDIS_URL


# ---- upstream fakes --------------------------------------------------------------------------------------


@pytest.fixture
async def ollama() -> AsyncIterator[Any]:
    from tests.fakes.ollama import FakeSettings, run_fake

    async with run_fake(FakeSettings(name="local")) as fake:
        yield fake


@pytest.fixture
async def cloud() -> AsyncIterator[Any]:
    from tests.fakes.ollama import FakeSettings, run_fake

    async with run_fake(FakeSettings(name="cloud", require_key="cloud-test-key")) as fake:
        yield fake


# ---- config and a served gateway -------------------------------------------------------------------------


def base_config(
    *,
    ollama_url: str,
    cloud_url: str = "http://127.0.0.1:9",
    database_url: str,
    redis_url: str | None = None,
    plugins: list[dict[str, Any]] | None = None,
    **server: Any,
) -> dict[str, Any]:
    """The example config's shape, pointed at the test's fakes and databases."""
    return {
        "server": {"public_url": "https://portal.example.test", **server},
        "database_url": database_url,
        "redis_url": redis_url,
        "timeouts": {"connect_seconds": 2, "first_byte_seconds": 10, "idle_seconds": 5, "total_seconds": 30},
        "upstreams": {
            "ollama": {"kind": "local", "base_url": f"{ollama_url}/v1", "parallel": 4},
            "cloud": {"kind": "cloud", "base_url": f"{cloud_url}/v1", "api_key": "cloud-test-key"},
        },
        "models": [
            {
                "name": "llama3.2:3b",
                "upstream": "ollama",
                "class": "local-small",
                "max_completion_tokens": 64,
                "fallback": "deepseek-v3.1:671b-cloud",
            },
            {
                "name": "qwen2.5-coder:14b",
                "upstream": "ollama",
                "class": "local-medium",
                "fallback": "deepseek-v3.1:671b-cloud",
            },
            {
                "name": "qwen3:30b",
                "upstream": "ollama",
                "class": "local-large",
                "fallback": "deepseek-v3.1:671b-cloud",
            },
            {"name": "deepseek-v3.1:671b-cloud", "upstream": "cloud", "class": "cloud"},
            {
                "name": "qwen3-embedding:0.6b",
                "upstream": "ollama",
                "class": "embedding",
                "max_completion_tokens": 1,
            },
        ],
        "hidden_models": ["glm-4.7-flash", "bge-m3", "nomic-embed-text"],
        "tiers": TIERS,
        "plugins": plugins or [],
    }


TIERS: dict[str, Any] = {
    "basic": {
        "label_ar": "أساسي",
        "label_en": "Basic",
        "price_fils": 2500,
        "monthly_credits": 1000,
        "requests_per_minute": 10,
        "model_classes": ["local-small", "local-medium", "embedding"],
    },
    "pro": {
        "label_ar": "احترافي",
        "label_en": "Pro",
        "price_fils": 7500,
        "monthly_credits": 5000,
        "requests_per_minute": 30,
        "cloud": True,
        "priority": 1,
        "model_classes": ["local-small", "local-medium", "local-large", "cloud", "embedding"],
    },
    "enterprise": {
        "label_ar": "مؤسسات",
        "label_en": "Enterprise",
        "price_fils": 25000,
        "monthly_credits": 20000,
        "requests_per_minute": 60,
        "cloud": True,
        "priority": 2,
        "model_classes": ["local-small", "local-medium", "local-large", "cloud", "embedding"],
    },
}


class Served:
    """A gateway served over real HTTP in the test's loop."""

    def __init__(self, app: EdgeApp, url: str, http: aiohttp.ClientSession) -> None:
        self.app = app
        self.url = url
        self.http = http

    @property
    def gateway(self) -> Gateway:
        return self.app.gateway

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.http.request(method, self.url + path, **kwargs)


@asynccontextmanager
async def serve_app(app: EdgeApp) -> AsyncIterator[Served]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit this: without it a keep-alive client waits ~40 ms (Nagle + delayed ACK).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, lifespan="on", log_level="critical", access_log=False, proxy_headers=False)
    )
    server.config.setup_event_loop = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("the gateway did not start")
        await asyncio.sleep(0.01)
    try:
        async with aiohttp.ClientSession() as http:
            yield Served(app, f"http://127.0.0.1:{port}", http)
    finally:
        await app.gateway.drain()
        server.should_exit = True
        await task
        sock.close()


ServeFactory = Callable[..., Any]


@pytest.fixture
def serve() -> ServeFactory:
    """`async with serve(config_dict, plugins=[...]) as gw:` builds a fresh app from the dict and serves it;
    `clock=` gives it a clock the test moves (tests.support.clock)."""

    def factory(config: dict[str, Any], *, plugins: list[object] | None = None, clock: Clock = SYSTEM) -> Any:
        checked = config_module.parse(config, env={})
        return serve_app(create_app(checked, plugins=plugins or [], clock=clock))

    return factory


def unique(prefix: str = "") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"
