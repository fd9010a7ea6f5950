"""Shared by the admin API tests: a gateway with auth_keys, tiers, credits, billing (on a fake MyFatoorah)
and admin, an admin's calls, and a chat request billed to a key."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from tests.fakes.myfatoorah import FakeMyFatoorah
from tests.support.billing import billing_config
from tests.support.bodies import chat_body


def admin_config(
    ollama: Any, db_url: str, fake: FakeMyFatoorah | None, *, redis_url: str | None = None, **settings: Any
) -> dict[str, Any]:
    config = billing_config(ollama, db_url, fake, redis_url=redis_url)
    config["plugins"].append({"name": "admin", "settings": settings})
    return config


@asynccontextmanager
async def admin_gateway(
    serve: Any, ollama: Any, db_url: str, fake: FakeMyFatoorah | None, **kw: Any
) -> AsyncIterator[Any]:
    async with serve(admin_config(ollama, db_url, fake, **kw)) as served:
        if fake is not None:
            fake.settings.webhook_url = served.url + "/api/billing/webhooks/myfatoorah"
        yield served


async def chat(served: Any, secret: str) -> int:
    """Status of one chat request with the key `secret`."""
    headers = {"content-type": "application/json", "Authorization": f"Bearer {secret}"}
    async with served.request("POST", "/v1/chat/completions", data=chat_body(), headers=headers) as resp:
        await resp.read()
        return int(resp.status)


async def text_of(served: Any, path: str, headers: dict[str, str]) -> tuple[int, str, Any]:
    """(status, body text, headers) of a GET (the CSV exports)."""
    async with served.request("GET", path, headers=headers) as resp:
        return resp.status, await resp.text(), resp.headers


async def refused(served: Any, admin: Any, path: str, cases: dict[str, str]) -> None:
    """Each query of `cases` on `path` is the one 422 with its code, named in `fields` too."""
    for query, code in cases.items():
        async with served.request("GET", f"{path}?{query}", headers=admin.headers) as resp:
            body = await resp.json()
        assert resp.status == 422 and body["error"]["code"] == code, (query, body)
        assert body["error"]["fields"][body["error"]["param"]]["code"] == code, (query, body)
