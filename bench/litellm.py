"""LiteLLM's proxy as a benchmark target (issue 7): the same fake upstream behind LiteLLM instead of our gateway.

LiteLLM lives in its own virtual environment (`var/litellm-venv`, installed from PyPI on first use, pinned),
is configured from a YAML file written into the run's scratch directory (one OpenAI-compatible model on the
fake, a master key, no database, nothing that calls home), and serves with uvicorn's worker processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from bench.procs import BenchError, Proc, free_port, spawn, wait_for_http
from bench.targets import MODEL, ROOT, BenchEnv, Running, Target

VERSION = "1.106.2"
VENV = ROOT / "var" / "litellm-venv"
MASTER_KEY = "sk-bench-master"
# Each uvicorn worker prints this once its startup has loaded the config (LITELLM_LOG=ERROR silences uvicorn).
_CONFIG_LOADED = "Proxy initialized with Config"


def ensure_installed(venv: Path, version: str) -> Path:
    """`litellm[proxy]==version` in `venv`, installed (or reinstalled at that version) when not there; its CLI."""
    python = venv / "bin" / "python"
    if installed_version(python) != version:
        if not python.exists():
            _run(["python3", "-m", "venv", str(venv)], "create the LiteLLM venv")
        _run([str(python), "-m", "pip", "install", "--quiet", f"litellm[proxy]=={version}"], "install LiteLLM")
        found = installed_version(python)
        if found != version:
            raise BenchError(f"litellm: installed {version} into {venv}, but it reports {found}")
    return venv / "bin" / "litellm"


def installed_version(python: Path) -> str | None:
    if not python.exists():
        return None
    probe = "import importlib.metadata as m; print(m.version('litellm'))"
    out = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=False)
    return out.stdout.strip() if out.returncode == 0 else None


def _run(argv: list[str], what: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise BenchError(f"litellm: could not {what} ({' '.join(argv)}):\n{tail}")


def write_config(path: Path, upstream: str) -> Path:
    """LiteLLM's proxy config: JSON scalars are valid YAML, so values are quoted with `json.dumps`."""
    q = json.dumps
    path.write_text(
        f"""model_list:
  - model_name: {q(MODEL)}
    litellm_params:
      model: {q("openai/" + MODEL)}
      api_base: {q(upstream)}
      api_key: "sk-fake-upstream"
litellm_settings:
  # Token counting otherwise fetches a Hugging Face tokenizer for a llama model.
  disable_hf_tokenizer_download: true
  turn_off_message_logging: true
general_settings:
  master_key: {q(MASTER_KEY)}
  # No database_url: keys, spend and error logs have nowhere to go, and these say so explicitly.
  disable_spend_logs: true
  disable_error_logs: true
  store_model_in_db: false
  background_health_checks: false
"""
    )
    return path


def workers_of(pid: int) -> list[int]:
    """uvicorn's worker processes: the supervisor's multiprocessing-spawned children (not its resource tracker)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:  # the supervisor has exited
        return []
    found = []
    for child in children:
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline:
            found.append(int(child))
    return found


@dataclass(frozen=True)
class LiteLLM(Target):
    """LiteLLM's proxy (`litellm --config ... --num_workers N`) on uvicorn, its master process a supervisor only.

    Its streams carry one event more than the fake's: LiteLLM sends `finish_reason` in a chunk of its own
    after the last content chunk, so a 20-chunk answer is 21 chunks and `[DONE]`.
    """

    # Two workers on a two-core machine: pinning them to the one server CPU would halve them, so they and
    # their load share every CPU (Layout's "any"), like any gateway variant with more workers than server CPUs.
    serve_on: str = "any"
    load_on: str = "any"
    workers: int = 2
    version: str = VERSION
    venv: Path = VENV
    ready_timeout: float = 90.0

    def start(self, env: BenchEnv, stack: ExitStack) -> Running:
        litellm = ensure_installed(self.venv, self.version)
        config = write_config(env.work / f"{self.name}.yaml", env.fake_url + "/v1")
        port = free_port()
        # Not os.environ: a DATABASE_URL, REDIS_* or LITELLM_* there would change what LiteLLM sets up.
        environ = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR") if k in os.environ}
        environ |= {
            "LITELLM_MODE": "PRODUCTION",
            "LITELLM_LOG": "ERROR",
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS": "True",
            # Its startup prints reach the log at once (readiness is read from there), not at exit.
            "PYTHONUNBUFFERED": "1",
        }
        argv = [str(litellm), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
        argv += ["--num_workers", str(self.workers)]
        started = time.monotonic()
        proc = spawn(self.name, argv, cpus=env.layout.cpus(self.serve_on), env=environ, cwd=env.work, log_dir=env.work)
        stack.callback(proc.stop)
        base_url = f"http://127.0.0.1:{port}"
        wait_for_http(proc, f"{base_url}/health/liveliness", timeout=self.ready_timeout)
        self._wait_for_workers(proc, deadline=started + self.ready_timeout)
        return Running(
            base_url=base_url,
            cost_pids=proc.tree,
            worker_pids=lambda: workers_of(proc.pid),
            headers={"Authorization": f"Bearer {MASTER_KEY}"},
            ready_seconds=time.monotonic() - started,
        )

    def _wait_for_workers(self, proc: Proc, *, deadline: float) -> None:
        """The first worker up answers the liveliness probe alone; wait until every worker has loaded the config."""
        while time.monotonic() < deadline:
            proc.check_alive()
            loaded = proc.log.read_text(errors="replace").count(_CONFIG_LOADED)
            if loaded >= self.workers and len(workers_of(proc.pid)) == self.workers:
                return
            time.sleep(0.05)
        raise BenchError(f"{self.name}: not all {self.workers} workers started in time:\n{proc.tail()}")
