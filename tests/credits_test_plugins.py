"""Test-only plugins for the credits tests: a token-per-account authenticator and an event recorder.

Usable inline (`serve(config, plugins=[Plugin()])`) or from a config file as
`{name: credits_test_auth, module: tests.credits_test_plugins}` when the gateway runs as a process.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from edge.context import Principal, RequestContext
from edge.errors import Unauthorized
from edge.events import Event
from edge.hookspecs import hookimpl


def token(account_id: int, tier: str = "basic", locale: str = "ar") -> str:
    return f"acct-{account_id}-{tier}-{locale}"


def bearer(account_id: int, tier: str = "basic", locale: str = "ar") -> dict[str, str]:
    return {"Authorization": f"Bearer {token(account_id, tier, locale)}"}


class Plugin:
    """`Authorization: Bearer acct-<account>-<tier>-<locale>` is that account's key; `open` pays nothing."""

    name = "credits_test_auth"

    @hookimpl
    async def resayil_authenticate(self, ctx: RequestContext) -> Principal | None:
        header = ctx.headers.get("authorization", "")
        if header == "Bearer open":
            return Principal(account_id=None, tier="basic")
        parts = header.removeprefix("Bearer ").split("-")
        if len(parts) == 4 and parts[0] == "acct" and parts[1].isdigit():
            account = int(parts[1])
            return Principal(
                account_id=account, user_id=account * 10, key_id=account * 100, tier=parts[2], locale=parts[3]
            )
        if header:
            raise Unauthorized("Incorrect API key provided.")
        return None


class Events:
    """Keeps every published domain event."""

    name = "credits_test_events"

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    @hookimpl
    async def resayil_event(self, event: Event) -> None:
        self.seen.append((event.event_name, dataclasses.asdict(event)))

    def named(self, name: str) -> list[dict[str, Any]]:
        return [payload for event, payload in self.seen if event == name]


class Settled:
    """Keeps the context of every settled request (registered last, so it runs before the credits plugin)."""

    name = "credits_test_settled"

    def __init__(self) -> None:
        self.contexts: list[RequestContext] = []

    @hookimpl(trylast=True)
    async def resayil_settle(self, ctx: RequestContext) -> None:
        self.contexts.append(ctx)


class Counter:
    """Counts the requests that reached authorize: what a client's retries would multiply."""

    name = "credits_test_counter"

    def __init__(self) -> None:
        self.calls = 0

    @hookimpl
    async def resayil_authorize(self, ctx: RequestContext) -> None:
        self.calls += 1


# ---- shared by the credits tests -------------------------------------------------------------------------


def credits_config(
    *,
    ollama_url: str,
    database_url: str,
    redis_url: str | None = None,
    extra_plugins: list[dict[str, Any]] | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """The conftest's base config with the credits plugin switched on (settings passed through)."""
    from tests.conftest import base_config

    plugins = [{"name": "credits", "settings": settings}, *(extra_plugins or [])]
    return base_config(ollama_url=ollama_url, database_url=database_url, redis_url=redis_url, plugins=plugins)


def chat_body(model: str = "llama3.2:3b", text: str = "مرحبا، hello", **extra: Any) -> bytes:
    """The exact bytes a test sends, so it can compute the prompt's bound (their length) itself."""
    import orjson

    return orjson.dumps({"model": model, "messages": [{"role": "user", "content": text}], **extra})


def estimated_prompt(text: str, messages: int = 1) -> int:
    """The README's rule for a prompt the upstream did not count: ceil(UTF-8 bytes / 4) + 4 per message."""
    return -(-len(text.encode()) // 4) + 4 * messages


async def table_rows(gateway: Any, table: str, **where: Any) -> list[dict[str, Any]]:
    import sqlalchemy as sa

    from plugins.credits import tables

    t = {"balances": tables.balances, "ledger": tables.ledger, "holds": tables.holds, "usage": tables.usage}[table]
    query = sa.select(t).where(*[t.c[k] == v for k, v in where.items()])
    async with gateway.database.connect() as conn:
        return [dict(r._mapping) for r in (await conn.execute(query.order_by(*t.primary_key.columns))).all()]


async def until_settled(gateway: Any, account_id: int | None = None, within: float = 10.0) -> None:
    """Settlement runs after the last byte reached the client: wait until no hold is left."""
    import asyncio
    import time

    where = {} if account_id is None else {"account_id": account_id}
    deadline = time.monotonic() + within
    while await table_rows(gateway, "holds", **where):
        if time.monotonic() > deadline:
            raise TimeoutError("holds were not settled in time")
        await asyncio.sleep(0.02)


async def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """`python -m edge <args>` from the repository root: (exit code, stdout, stderr)."""
    import asyncio
    import sys

    from tests.conftest import ROOT

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


def crashed_request(served: Any, account: int) -> RequestContext:
    """What a worker that died after `reserve` leaves behind: a hold nobody will settle."""
    import time

    import orjson

    body = chat_body()
    return RequestContext(
        request_id="req-crashed",
        method="POST",
        path="/v1/chat/completions",
        endpoint="chat",
        headers={},
        client_ip="127.0.0.1",
        started=time.perf_counter(),
        body=body,
        payload=orjson.loads(body),
        model_name="llama3.2:3b",
        principal=Principal(account_id=account, tier="basic"),
        model=served.gateway.models["llama3.2:3b"],
    )
