"""A usage row records the HTTP status the client got (issue 15, finding 10: refused and failed requests
were recorded with status 0), for a success, a refusal after the hold was taken, and an upstream failure,
with and without leases, on SQLite and MariaDB."""

from __future__ import annotations

from typing import Any

import pytest

from edge.context import RequestContext
from edge.errors import GatewayError, PaymentRequired, ServiceUnavailable
from edge.hookspecs import hookimpl
from tests.support.auth import TokenAuth, bearer
from tests.support.bodies import chat_body
from tests.support.credits import credits_config, table_rows, until_settled

START = 1_000_000
LEASES = pytest.mark.parametrize("leases", [{}, {"lease_requests": 32, "lease_idle_ms": 50}], ids=["holds", "leases"])


class RefuseAfterHold:
    """A later plugin's veto once credits has taken its hold: a team budget (402) or a full queue (503)."""

    name = "refuse_after_hold"

    def __init__(self, error: GatewayError) -> None:
        self.error = error

    @hookimpl(trylast=True)
    async def resayil_reserve(self, ctx: RequestContext) -> None:
        assert "credits" in ctx.extras, "credits must have held first"
        raise self.error


async def served_row(serve: Any, db_url: str, ollama: Any, *extra: object, **leases: Any) -> tuple[int, dict[str, Any]]:
    """(the status the client got, the request's one usage row)."""
    config = credits_config(ollama_url=ollama.url, database_url=db_url, **leases)
    async with serve(config, plugins=[TokenAuth(), *extra]) as served:
        await served.gateway.plugin("credits").grant(account_id=1, amount_milli=START, kind="grant", reference="seed")
        async with served.request(
            "POST", "/v1/chat/completions", data=chat_body(), headers={"content-type": "application/json", **bearer(1)}
        ) as r:
            status = r.status
            await r.read()
        await until_settled(served.gateway, 1)
        [row] = await table_rows(served.gateway, "usage", account_id=1)
        balance = await served.gateway.plugin("credits").balance(1)
    if status != 200:
        assert (row["cost_milli"], balance["balance_milli"], balance["reserved_milli"]) == (0, START, 0)
    return status, row


@LEASES
async def test_a_success_records_200(db_url: str, ollama: Any, serve: Any, leases: dict[str, int]) -> None:
    status, row = await served_row(serve, db_url, ollama, **leases)
    assert (status, row["status"], row["outcome"]) == (200, 200, "ok")


@LEASES
@pytest.mark.parametrize(
    "error",
    [
        PaymentRequired("The team's budget is spent.", code="insufficient_quota"),
        ServiceUnavailable("The local queue is full.", code="queue_full"),
    ],
    ids=["402", "503"],
)
async def test_a_refusal_after_the_hold_records_the_status_the_client_got(
    db_url: str, ollama: Any, serve: Any, leases: dict[str, int], error: GatewayError
) -> None:
    status, row = await served_row(serve, db_url, ollama, RefuseAfterHold(error), **leases)
    assert status == error.status
    assert (row["status"], row["outcome"], row["usage_source"]) == (error.status, "refused", "none")


@LEASES
async def test_an_upstream_failure_records_the_status_the_client_got(
    db_url: str, ollama: Any, serve: Any, leases: dict[str, int]
) -> None:
    ollama.settings.fail_status = 500
    status, row = await served_row(serve, db_url, ollama, **leases)
    assert status == 502
    assert (row["status"], row["outcome"]) == (502, "upstream_error")
