"""Real processes for end-to-end tests: the gateway under granian and the fake Ollama."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from tests.conftest import ROOT


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESAYIL_")}
    env.update(extra)
    return env


def wait_http(port: int, path: str = "/healthz", timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                if sock.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"nothing answered {path} on port {port}")


@contextmanager
def gateway_process(
    env: dict[str, str], *, workers: int = 1, port: int | None = None, log: Path | None = None
) -> Iterator[int]:
    """`python -m edge migrate` then `python -m edge serve`; yields the port, stops it afterwards."""
    port = port or free_port()
    subprocess.run(
        [sys.executable, "-m", "edge", "migrate"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge", "serve", "--workers", str(workers), "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_http(port)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log:
            out.close()  # type: ignore[union-attr]


@contextmanager
def gateway_processes(config_path: Path, logs: Path, count: int = 2) -> Iterator[list[int]]:
    """`python -m edge serve --workers 2` `count` times on one config; yields their ports."""
    env = clean_env(RESAYIL_CONFIG=str(config_path))
    ports = [free_port() for _ in range(count)]
    with ExitStack() as stack:
        procs = []
        for i, port in enumerate(ports):
            out = stack.enter_context(open(logs / f"gateway-{i}.log", "wb"))
            proc = subprocess.Popen(
                [sys.executable, "-m", "edge", "serve", "--workers", "2", "--port", str(port)],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
            procs.append(proc)
        try:
            for port in ports:
                wait_http(port, timeout=30)
            yield ports
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@contextmanager
def fake_ollama_process(*args: str) -> Iterator[str]:
    """The fake Ollama as its own process; yields its URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.ollama", "--port", "0", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("ready "), line
        yield line.split(" ", 1)[1]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


async def until(predicate: object, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.02)


async def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """`python -m edge <args>` from the repository root: (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edge",
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


class Gate:
    """The fake Ollama's `--gate` file: answers wait for it, so a burst's proof does not bet on a latency
    outlasting the time every request takes to reach `reserve` (on a loaded machine it did not, and early
    successes settled, freed the unspent part of their holds and let more requests in, legitimately).

    Count each answer that comes back with `returned()`; `open_after(n)` opens the gate once `n` have (the
    refusals a proof expects), or after `within` seconds, so a burst that let too many through is not stuck
    but fails its count."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self.wanted: int | None = None
        self.enough = asyncio.Event()

    @property
    def args(self) -> tuple[str, str]:
        return ("--gate", str(self.path))

    def returned(self) -> None:
        self.count += 1
        if self.wanted is not None and self.count >= self.wanted:
            self.enough.set()

    async def open_after(self, answers: int, within: float = 60.0) -> None:
        self.wanted = answers
        if self.count >= answers:
            self.enough.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.enough.wait(), within)
        self.path.touch()
