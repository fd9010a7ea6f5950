"""What a benchmark run measures: the fake upstream directly and gateway variants, as data.

Adding a variant is one entry in `TARGETS`: an `EdgeGateway` with
another config file and worker count, with a `prepare` step that creates what it needs (an account and
an API key, say) and returns the headers to send, or a new `Target` subclass for another product
(LiteLLM's proxy, say) that starts it and says which processes to measure.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml
from sqlalchemy.engine import url as sa_url

from bench.machine import Layout
from bench.procs import BenchError, Proc, descendants, free_port, pids_named, spawn, wait_for_http

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
MODEL = "llama3.2:3b"


@dataclass
class BenchEnv:
    """What every target can use: a scratch directory, the running fake upstream, the CPU layout."""

    work: Path
    fake: Proc
    fake_url: str
    layout: Layout
    python: str
    # The checkout the gateway runs from (another one A/B-tests a change against the same fake).
    src: Path = ROOT


@dataclass
class Running:
    """A started target, ready for load."""

    base_url: str
    # Processes whose CPU time is this target's cost per request.
    cost_pids: Callable[[], list[int]]
    # Processes whose memory is reported (gateway workers); empty when memory is not this target's to report.
    worker_pids: Callable[[], list[int]] = list
    # Shared services the target's requests use (MariaDB, Redis): their CPU is reported beside the target's.
    service_pids: Callable[[], list[int]] = list
    headers: dict[str, str] = field(default_factory=dict)
    model: str = MODEL
    ready_seconds: float | None = None
    # Run after the load: each returns (what it checked, whether it held, what it printed).
    checks: list[Callable[[], tuple[str, bool, str]]] = field(default_factory=list)


@dataclass(frozen=True)
class Target:
    """Something to put load on. `serve_on`/`load_on` name `Layout` roles: which CPUs it and its load get."""

    name: str
    label: str
    serve_on: str = "server"
    load_on: str = "aux"

    def start(self, env: BenchEnv, stack: ExitStack) -> Running:
        raise NotImplementedError


@dataclass(frozen=True)
class Direct(Target):
    """The fake upstream itself, with no gateway in between: the limit every gateway is measured against."""

    # The fake lives on the aux CPUs for the whole run; its load gets the otherwise idle server CPUs.
    serve_on: str = "aux"
    load_on: str = "server"

    def start(self, env: BenchEnv, stack: ExitStack) -> Running:
        return Running(base_url=env.fake_url, cost_pids=env.fake.tree)


# Creates what a variant needs once it is up (an account, an API key) and returns the headers to send.
# Called with the environment the gateway runs in, so it can run the gateway's own CLI commands.
Prepare = Callable[[BenchEnv, Running, dict[str, str]], dict[str, str]]
# Changes a config loaded from YAML (raised limits, fewer plugins) before the gateway reads it.
Patch = Callable[[dict[str, Any]], None]

# Services the chains with a production store use; both are emptied for each target.
MARIADB_URL = os.environ.get("RESAYIL_BENCH_MARIADB_URL", "mysql+aiomysql://root@127.0.0.1:3306")
REDIS_URL = os.environ.get("RESAYIL_BENCH_REDIS_URL", "redis://127.0.0.1:6379")


def fresh_mariadb(name: str) -> str:
    """An empty database `resayil_bench_<name>` on MariaDB; returns its URL."""
    url = sa_url.make_url(MARIADB_URL)
    database = f"resayil_bench_{name}".replace("-", "_")
    engine = sa.create_engine(url.set(drivername="mysql+pymysql"))
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{database}`")
            conn.exec_driver_sql(f"CREATE DATABASE `{database}` CHARACTER SET utf8mb4")
    finally:
        engine.dispose()
    return str(url.set(database=database).render_as_string(hide_password=False))


def fresh_redis(db: int) -> str:
    """Redis database `db`, emptied; returns its URL."""
    import redis

    url = f"{REDIS_URL.rstrip('/')}/{db}"
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()
    return url


@dataclass(frozen=True)
class EdgeGateway(Target):
    """Our gateway from `config` (a YAML file, changed by `patch`), migrated into a fresh database, served
    by granian. The database is a SQLite file, or with `mariadb` an emptied MariaDB database; `redis_db`
    gives it an emptied Redis database (required for more than one worker)."""

    config: Path = BENCH_DIR / "minimal.yaml"
    patch: Patch | None = None
    workers: int = 1
    mariadb: bool = False
    redis_db: int | None = None
    environ: dict[str, str] = field(default_factory=dict)
    prepare: Prepare | None = None
    ready_timeout: float = 30.0
    # After the load, `python -m edge reconcile` must find every balance equal to its ledger (credits plugin).
    reconcile: bool = False

    def config_source(self, env: BenchEnv) -> Path:
        """The config as the gateway under test ships it: from `--gateway-src`'s tree when it has the file,
        so an A/B run gives each checkout the settings it knows."""
        try:
            relative = self.config.relative_to(ROOT)
        except ValueError:
            return self.config
        theirs = env.src / relative
        return theirs if theirs.is_file() else self.config

    def config_file(self, env: BenchEnv) -> Path:
        source = self.config_source(env)
        if self.patch is None:
            return source
        data = yaml.safe_load(source.read_text())
        self.patch(data)
        path = env.work / f"{self.name}.yaml"
        path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False))
        return path

    def start(self, env: BenchEnv, stack: ExitStack) -> Running:
        database = fresh_mariadb(self.name) if self.mariadb else f"sqlite+aiosqlite:///{env.work / self.name}.db"
        environ = {
            **os.environ,
            "RESAYIL_CONFIG": str(self.config_file(env)),
            "RESAYIL_DATABASE_URL": database,
            "RESAYIL_OLLAMA_URL": env.fake_url,
            "RESAYIL_CLOUD_URL": env.fake_url + "/v1",
            "RESAYIL_WORKERS": str(self.workers),
            **({"RESAYIL_REDIS_URL": fresh_redis(self.redis_db)} if self.redis_db is not None else {}),
            **self.environ,
        }
        migrate = subprocess.run(
            [env.python, "-m", "edge", "migrate"], cwd=env.src, env=environ, capture_output=True, text=True, check=False
        )
        if migrate.returncode != 0:
            raise BenchError(f"{self.name}: `python -m edge migrate` failed:\n{migrate.stderr.strip()}")
        port = free_port()
        started = time.monotonic()
        argv = [env.python, "-m", "edge", "serve", "--workers", str(self.workers), "--port", str(port)]
        proc = spawn(self.name, argv, cpus=env.layout.cpus(self.serve_on), env=environ, cwd=env.src, log_dir=env.work)
        stack.callback(proc.stop)
        base_url = f"http://127.0.0.1:{port}"
        wait_for_http(proc, f"{base_url}/healthz", timeout=self.ready_timeout)
        services = (["mariadbd", "mysqld"] if self.mariadb else []) + (
            ["redis-server"] if self.redis_db is not None else []
        )
        running = Running(
            base_url=base_url,
            cost_pids=proc.tree,
            worker_pids=lambda: descendants(proc.pid),
            service_pids=lambda: pids_named(services),
            ready_seconds=time.monotonic() - started,
        )
        if self.prepare is not None:
            running.headers.update(self.prepare(env, running, environ))
        if self.reconcile:
            running.checks.append(lambda: _reconcile(env, environ))
        return running


def _reconcile(env: BenchEnv, environ: dict[str, str]) -> tuple[str, bool, str]:
    # Requests still settling when the load stops finish within moments; reconcile then sees no live hold.
    time.sleep(1.0)
    what = "`python -m edge reconcile` exits 0"
    try:
        done = subprocess.run(
            [env.python, "-m", "edge", "reconcile"],
            cwd=env.src,
            env=environ,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
    except subprocess.TimeoutExpired:
        return what, False, "did not finish within 120 s"
    output = (done.stdout + done.stderr).strip().splitlines()
    return what, done.returncode == 0, output[-1] if output else ""
