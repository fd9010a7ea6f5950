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

from bench.machine import Layout
from bench.procs import BenchError, Proc, descendants, free_port, spawn, wait_for_http

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
    headers: dict[str, str] = field(default_factory=dict)
    model: str = MODEL
    ready_seconds: float | None = None


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


Prepare = Callable[[BenchEnv, Running], dict[str, str]]


@dataclass(frozen=True)
class EdgeGateway(Target):
    """Our gateway from `config` (a YAML file), migrated into a fresh SQLite file, served by granian."""

    config: Path = BENCH_DIR / "minimal.yaml"
    workers: int = 1
    environ: dict[str, str] = field(default_factory=dict)
    # Creates what the variant needs once it is up (keys, accounts) and returns the headers to send.
    prepare: Prepare | None = None
    ready_timeout: float = 30.0

    def start(self, env: BenchEnv, stack: ExitStack) -> Running:
        environ = {
            **os.environ,
            "RESAYIL_CONFIG": str(self.config),
            "RESAYIL_DATABASE_URL": f"sqlite+aiosqlite:///{env.work / self.name}.db",
            "RESAYIL_OLLAMA_URL": env.fake_url,
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
        running = Running(
            base_url=base_url,
            cost_pids=proc.tree,
            worker_pids=lambda: descendants(proc.pid),
            ready_seconds=time.monotonic() - started,
        )
        if self.prepare is not None:
            running.headers.update(self.prepare(env, running))
        return running


# Issue 7 adds the full chain (an EdgeGateway with the example config's plugins, a prepare step that creates a
# key, workers matching LiteLLM's) and LiteLLM's proxy (a Target subclass) here.
TARGETS: tuple[Target, ...] = (
    Direct("direct", "fake Ollama, no gateway"),
    EdgeGateway("minimal", "gateway, bare core (open access, no plugins), 1 worker"),
)
