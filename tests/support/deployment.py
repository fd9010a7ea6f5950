"""The gateway as deployed, for the proofs that need real processes: `python -m edge serve --workers 2` on
MariaDB + Redis against the fake Ollama in its own process, an in-process `Gateway` on the same config to
seed rows and read them back, and `Remote`, which the portal helpers (tests.support.portal) take like a
served test app, so a test registers users, invites and patches through the workers' own HTTP API.

    async with deployed(tmp_path, mariadb_database, redis_url, plugins=[...]) as site:
        user = await register_user(site.remote)
        answers = await burst(site.url("/v1/chat/completions"), body, secrets, 200)
    # leaving it stopped the workers, ran `python -m edge reconcile` (exit 0, no difference) and found no
    # traceback or error in the workers' log
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from edge import config as config_module
from edge.gateway import Gateway
from tests.conftest import truncate_mariadb
from tests.support.credits import credits_config
from tests.support.portal import bearer
from tests.support.servers import Gate, clean_env, fake_ollama_process, gateway_processes, run_cli

# The fake answers no sooner than this; `Deployed.gate` holds the answers of a proof's burst until all its
# refusals are back (see servers.Gate).
LATENCY = "1"


class Remote:
    """A running gateway's HTTP API in the shape of the conftest's served app: `request(...)` and `gateway`
    (the in-process one, for the helpers that change rows through services)."""

    def __init__(self, base: str, gateway: Gateway, http: aiohttp.ClientSession) -> None:
        self.url = base
        self.gateway = gateway
        self.http = http

    def request(self, method: str, path: str, **kw: Any) -> Any:
        return self.http.request(method, self.url + path, **kw)


@dataclass
class Deployed:
    port: int
    config: dict[str, Any]
    config_path: Path
    gateway: Gateway
    remote: Remote
    gate: Gate

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@asynccontextmanager
async def deployed(
    tmp_path: Path,
    mariadb_database: str,
    redis_url: str,
    *,
    plugins: Sequence[dict[str, Any]],
    lease_requests: int = 0,
    fake_args: Sequence[str] = ("--latency", LATENCY),
    credits: dict[str, Any] | None = None,
    gated: bool = False,
) -> AsyncIterator[Deployed]:
    """One `serve --workers 2` with the credits plugin (`credits`: its settings) and `plugins` on an emptied
    MariaDB database, the fake Ollama run with `fake_args` and a closed `gate` when `gated` (the test opens
    it: `site.gate.open_after(...)`); on a clean exit, `reconcile` must find nothing and the log must hold
    no error."""
    truncate_mariadb(mariadb_database)
    gate = Gate(tmp_path / "fake-ollama.gate")
    if not gated:
        gate.path.touch()
    with fake_ollama_process(*fake_args, *gate.args) as ollama_url:
        config = credits_config(
            ollama_url=ollama_url,
            database_url=mariadb_database,
            redis_url=redis_url,
            extra_plugins=list(plugins),
            lease_requests=lease_requests,
            **(credits or {}),
        )
        config["server"]["log_level"] = "warning"
        path = tmp_path / "gateway.yaml"
        path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
        with gateway_processes(path, tmp_path, count=1) as [port]:
            gateway = Gateway(config_module.parse(config, env={}))
            await gateway.start()
            try:
                async with aiohttp.ClientSession() as http:
                    remote = Remote(f"http://127.0.0.1:{port}", gateway, http)
                    yield Deployed(port, config, path, gateway, remote, gate)
            finally:
                await gateway.stop()
        code, out, err = await run_cli("reconcile", env=clean_env(RESAYIL_CONFIG=str(path)))
    assert code == 0 and "0 difference(s)" in out, out + err
    text = (tmp_path / "gateway-0.log").read_text(errors="replace")
    assert "Traceback" not in text and '"level":"error"' not in text, text[-3000:]


async def burst(
    url: str, body: bytes, secrets: Sequence[str], count: int, *, fresh: bool = False, gate: Gate | None = None
) -> list[tuple[int, Any, dict[str, str]]]:
    """`count` concurrent POSTs of `body` to `url`, the i-th with `secrets[i % len(secrets)]`: (status, JSON,
    headers) each. `fresh`: a connection each, so both workers answer some. `gate` counts the answers."""
    connector = aiohttp.TCPConnector(limit=0, force_close=fresh)

    async def send(http: aiohttp.ClientSession, secret: str) -> tuple[int, Any, dict[str, str]]:
        headers = {"content-type": "application/json", **bearer(secret)}
        async with http.post(url, data=body, headers=headers) as r:
            answer = r.status, await r.json(), dict(r.headers)
        if gate is not None:
            gate.returned()
        return answer

    async with aiohttp.ClientSession(connector=connector) as http:
        return await asyncio.gather(*(send(http, secrets[i % len(secrets)]) for i in range(count)))
