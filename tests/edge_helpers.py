"""Inline plugins the edge tests register to watch and steer the chain."""

from __future__ import annotations

from typing import Any

from edge.context import Principal, RequestContext
from edge.errors import PaymentRequired, Unauthorized
from edge.hookspecs import hookimpl

CHAT = {"model": "llama3.2:3b", "messages": [{"role": "user", "content": "مرحبا، hello"}]}


class StaticAuth:
    """Every request with `Authorization: Bearer good` is account 1; anything else is refused."""

    name = "static_auth"

    def __init__(self, tier: str = "pro") -> None:
        self.tier = tier

    @hookimpl
    async def resayil_authenticate(self, ctx: RequestContext) -> Principal | None:
        header = ctx.headers.get("authorization", "")
        if header == "Bearer good":
            return Principal(account_id=1, user_id=1, tier=self.tier, key_id=1)
        if header:
            raise Unauthorized("Incorrect API key provided.")
        return None


class Recorder:
    """Counts reserve and settle per request id and keeps the settled contexts."""

    name = "recorder"

    def __init__(self, *, refuse_reserve: bool = False) -> None:
        self.reserved: list[str] = []
        self.settled: list[RequestContext] = []
        self.refuse_reserve = refuse_reserve

    @hookimpl
    async def resayil_reserve(self, ctx: RequestContext) -> None:
        self.reserved.append(ctx.request_id)
        if self.refuse_reserve:
            raise PaymentRequired("No credit left.", code="insufficient_quota")

    @hookimpl
    async def resayil_settle(self, ctx: RequestContext) -> None:
        self.settled.append(ctx)

    def settle_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for ctx in self.settled:
            counts[ctx.request_id] = counts.get(ctx.request_id, 0) + 1
        return counts


def auth_headers(**extra: Any) -> dict[str, str]:
    return {"Authorization": "Bearer good", **extra}
