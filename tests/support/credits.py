"""Helpers for the credits tests: a config with the credits plugin, its rows, and waiting for settlement."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import sqlalchemy as sa

from edge.context import Principal, RequestContext
from plugins.credits import tables
from tests.support.bodies import chat_body


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


async def table_rows(gateway: Any, table: str, **where: Any) -> list[dict[str, Any]]:
    t = {"balances": tables.balances, "ledger": tables.ledger, "holds": tables.holds, "usage": tables.usage}[table]
    query = sa.select(t).where(*[t.c[k] == v for k, v in where.items()])
    async with gateway.database.connect() as conn:
        return [dict(r._mapping) for r in (await conn.execute(query.order_by(*t.primary_key.columns))).all()]


async def until_settled(gateway: Any, account_id: int | None = None, within: float = 10.0) -> None:
    """Settlement runs after the last byte reached the client: wait until no hold is left."""
    where = {} if account_id is None else {"account_id": account_id}
    deadline = time.monotonic() + within
    while await table_rows(gateway, "holds", **where):
        if time.monotonic() > deadline:
            raise TimeoutError("holds were not settled in time")
        await asyncio.sleep(0.02)


def crashed_request(served: Any, account: int) -> RequestContext:
    """What a worker that died after `reserve` leaves behind: a hold nobody will settle."""
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
