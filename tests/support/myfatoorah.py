"""Shared by the MyFatoorah tests: a webhook receiver and a checkout request."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web

from plugins.billing.gateway_client import CheckoutRequest


@dataclass
class Receiver:
    """Records every webhook it is sent and answers `status`."""

    url: str = ""
    status: int = 200
    received: list[tuple[bytes, dict[str, str]]] = field(default_factory=list)


@contextlib.asynccontextmanager
async def webhook_receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()

    async def take(request: web.Request) -> web.Response:
        receiver.received.append((await request.read(), dict(request.headers)))
        return web.Response(status=receiver.status)

    app = web.Application()
    app.router.add_post("/hook", take)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    receiver.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    try:
        yield receiver
    finally:
        await runner.cleanup()


def checkout(amount_fils: int = 5000, reference: str = "ORD-1") -> CheckoutRequest:
    return CheckoutRequest(
        amount_fils=amount_fils,
        reference=reference,
        item="5,000 credits",
        customer_name="Test Customer",
        callback_url="http://127.0.0.1:9/api/billing/callback",
        error_url="http://127.0.0.1:9/api/billing/callback?error=1",
        language="ar",
        customer_email="buyer@example.com",
    )
