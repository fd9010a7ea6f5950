"""End to end under granian, as `make run` serves it: migrate, serve, health, a relayed chat, a cut stream."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.bodies import CHAT
from tests.support.servers import clean_env, gateway_process, until

pytestmark = pytest.mark.slow


async def test_serve_relays_chat_and_streams_to_the_ollama_url(tmp_path: Path, ollama: Any) -> None:
    env = clean_env(
        RESAYIL_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/gw.db",
        RESAYIL_OLLAMA_URL=ollama.url,
        RESAYIL_OPEN_ACCESS="true",
        RESAYIL_LOG_LEVEL="warning",
    )
    with gateway_process(env, log=tmp_path / "gw.log") as port:
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(base + "/healthz") as r:
                assert r.status == 200 and await r.json() == {"status": "ok"}
            async with http.get(base + "/readyz") as r:
                ready = await r.json()
            assert ready["parts"]["database"]["ok"] and ready["parts"]["upstream:ollama"]["state"] == "up"
            assert ready["parts"]["upstream:cloud"]["state"] == "not_configured"
            assert r.status == 200
            async with http.post(base + "/v1/chat/completions", json=CHAT) as r:
                assert r.status == 200
                assert (await r.json())["choices"][0]["message"]["content"] == "tok0 tok1 tok2 tok3 tok4 "
            async with http.get(base + "/v1/nope") as r:
                assert r.status == 404 and (await r.json())["error"]["code"] == "unknown_url"

            ollama.settings.chunks = 200
            ollama.settings.chunk_interval = 0.02
            r = await http.post(base + "/v1/chat/completions", json={**CHAT, "stream": True})
            assert r.status == 200
            await r.content.readuntil(b"\n\n")
            r.close()
            # granian tells the gateway the client left, and the gateway lets go of the upstream.
            await until(lambda: ollama.in_flight == 0, within=5)
    log = (tmp_path / "gw.log").read_text()
    assert "Traceback" not in log


async def test_readyz_is_503_when_no_upstream_answers(tmp_path: Path, ollama: Any) -> None:
    db = tmp_path / "gw.db"
    env = clean_env(
        RESAYIL_DATABASE_URL=f"sqlite+aiosqlite:///{db}",
        RESAYIL_OLLAMA_URL="http://127.0.0.1:9",
        RESAYIL_LOG_LEVEL="warning",
    )
    with gateway_process(env) as port:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/readyz") as r:
                body = await r.json()
                assert r.status == 503
    assert body["status"] == "not_ready"
    assert body["parts"]["upstream:ollama"] == {"ok": False, "state": "unreachable", "kind": "local"}
