"""No request costs more than its hold, and no request's data can fail another's (issue 15, findings 5, 6).

A hostile or broken upstream may report any usage: 1e30 tokens, two billion, negative counts. Whatever it
says, a request is charged at most (prompt bound + completion budget) x the route's multiplier, its usage
row records the counts charged, and every other account's charges are written exactly once, with leases
(settlements batched across accounts) and without, on SQLite and MariaDB.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from tests.support.absurd_usage import AbsurdUsage
from tests.support.auth import TokenAuth, bearer
from tests.support.bodies import chat_body
from tests.support.credits import credits_config, table_rows, until_settled

START = 1_000_000
LEASES = pytest.mark.parametrize("leases", [{}, {"lease_requests": 32, "lease_idle_ms": 50}], ids=["holds", "leases"])
GOOD = (1, 2, 3)
BAD = 4


@asynccontextmanager
async def gateway(
    serve: Any, db_url: str, ollama: Any, *extra: object, accounts: tuple[int, ...], **settings: Any
) -> AsyncIterator[Any]:
    config = credits_config(ollama_url=ollama.url, database_url=db_url, **settings)
    async with serve(config, plugins=[TokenAuth(), *extra]) as served:
        for account in accounts:
            await served.gateway.plugin("credits").grant(
                account_id=account, amount_milli=START, kind="grant", reference=f"seed-{account}"
            )
        yield served


async def post(served: Any, body: bytes, account: int) -> tuple[int, Any]:
    async with served.request(
        "POST", "/v1/chat/completions", data=body, headers={"content-type": "application/json", **bearer(account)}
    ) as r:
        return r.status, await r.json()


async def books(served: Any, account: int) -> tuple[dict[str, int], list[dict[str, Any]], list[dict[str, Any]]]:
    """(balance, usage rows, ledger rows) of one account once nothing is held any more."""
    await until_settled(served.gateway, account)
    state = await served.gateway.plugin("credits").balance(account)
    usage = await table_rows(served.gateway, "usage", account_id=account)
    ledger = await table_rows(served.gateway, "ledger", account_id=account)
    return state, usage, ledger


@LEASES
async def test_an_absurd_usage_of_one_account_never_loses_other_accounts_charges(
    db_url: str, ollama: Any, serve: Any, leases: dict[str, int]
) -> None:
    body = chat_body()
    hold = len(body) + 64  # the model's default completion cap, at 1x
    absurd = AbsurdUsage(AbsurdUsage.Settings(accounts=[BAD]))
    async with gateway(serve, db_url, ollama, absurd, accounts=(*GOOD, BAD), **leases) as served:
        # Interleaved, so that with leases the bad account's charges share batches with the others'.
        order = [account for _ in range(6) for account in (*GOOD, BAD)]
        answers = await asyncio.gather(*(post(served, body, account) for account in order))
        assert [status for status, _ in answers] == [200] * len(order)
        charges: dict[int, list[int]] = {}
        for (_, data), account in zip(answers, order, strict=True):
            charges.setdefault(account, []).append(data["usage"]["total_tokens"])
        for account in GOOD:
            expected = charges[account]
            state, usage, ledger = await books(served, account)
            assert sorted(u["cost_milli"] for u in usage) == sorted(expected)  # each charged exactly once
            assert [r["kind"] for r in ledger] == ["grant"] + ["usage"] * len(expected)
            assert state["balance_milli"] == START - sum(expected) == sum(r["amount_milli"] for r in ledger)
            assert state["reserved_milli"] == 0
        state, usage, ledger = await books(served, BAD)
        # Another account (on a fresh lease, if any) is still served and charged after it all.
        status, data = await post(served, body, GOOD[0])
        assert status == 200
        again, _, _ = await books(served, GOOD[0])
    assert len(usage) == 6 and all(u["cost_milli"] == hold for u in usage)
    assert all((u["prompt_tokens"], u["completion_tokens"]) == (len(body), 64) for u in usage)
    assert state["balance_milli"] == START - 6 * hold == sum(r["amount_milli"] for r in ledger)
    assert state["reserved_milli"] == 0
    assert again["balance_milli"] == START - sum(charges[GOOD[0]]) - data["usage"]["total_tokens"]


@LEASES
async def test_a_request_is_never_charged_more_than_its_hold_whatever_the_upstream_counts(
    db_url: str, ollama: Any, serve: Any, leases: dict[str, int]
) -> None:
    ollama.settings.usage = {"prompt_tokens": 5, "completion_tokens": 2_000_000_000, "total_tokens": 2_000_000_005}
    body = chat_body(max_tokens=20)
    async with gateway(serve, db_url, ollama, accounts=(1,), **leases) as served:
        status, _ = await post(served, body, 1)
        assert status == 200
        state, usage, ledger = await books(served, 1)
    # The upstream said 5 prompt tokens and could not have made more than the 20 it was allowed.
    assert (usage[0]["prompt_tokens"], usage[0]["completion_tokens"], usage[0]["cost_milli"]) == (5, 20, 25)
    assert START - state["balance_milli"] == 25 <= len(body) + 20
    assert state["balance_milli"] == sum(r["amount_milli"] for r in ledger)


BODY = chat_body(max_tokens=20)
P = len(BODY)  # the prompt's bound: the body's bytes


@LEASES
@pytest.mark.parametrize(
    ("counts", "charged"),
    [
        ((-1000, 5), (P, 5)),
        ((5, -1000), (5, 20)),
        ((1e30, 5), (P, 5)),
        ((5, 7.0), (5, 20)),
        (("12", 5), (P, 5)),
        ((None, None), (P, 20)),
        ((True, 5), (P, 5)),
    ],
    ids=["negative-prompt", "negative-completion", "float", "float-whole", "string", "none", "bool"],
)
async def test_a_count_that_is_not_a_non_negative_integer_charges_its_bound(
    db_url: str, ollama: Any, serve: Any, leases: dict[str, int], counts: tuple[Any, Any], charged: tuple[int, int]
) -> None:
    bad = AbsurdUsage(AbsurdUsage.Settings(accounts=[1], prompt=counts[0], completion=counts[1]))
    async with gateway(serve, db_url, ollama, bad, accounts=(1,), **leases) as served:
        status, _ = await post(served, BODY, 1)
        assert status == 200
        state, usage, ledger = await books(served, 1)
    assert (usage[0]["prompt_tokens"], usage[0]["completion_tokens"]) == charged
    assert usage[0]["cost_milli"] == START - state["balance_milli"] == sum(charged) <= P + 20
    assert state["balance_milli"] == sum(r["amount_milli"] for r in ledger)


async def test_an_entry_that_cannot_be_written_fails_only_itself_and_keeps_its_lease(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past every check, a row the database refuses (here a usage row without its request id): the batch
    holding it fails, its entries are written one by one, and only that one charge is not written."""
    from edge.db import Database
    from plugins.credits import lease_book
    from tests.test_credits_leases import UNIT, Books, until, usage_row, worker

    monkeypatch.setattr(lease_book, "RETRY_SECONDS", 0.05)
    db = Database(db_url)
    books = Books(db)
    accounts = (11, 12, 13)
    for account in accounts:
        await books.ledger.credit(account_id=account, amount_milli=100 * UNIT, kind="grant", reference=f"f{account}")
    leases = worker(db, batch=0.05)
    try:
        tickets = {
            a: [await leases.take(account_id=a, amount_milli=UNIT, tier="basic") for _ in range(3)] for a in accounts
        }
        settling = []
        for i in range(3):
            for a in accounts:
                ticket = tickets[a][i]
                assert ticket is not None
                row = usage_row(f"r{a}-{i}")
                if (a, i) == (12, 1):
                    row["request_id"] = None  # NOT NULL on both databases
                settling.append(leases.settle(ticket, charge_id=f"c{a}-{i}", charge_milli=400 + i, usage_row=row))
        changes = await asyncio.gather(*settling)

        async def given_back() -> bool:  # nothing parked: the idle lease's room, the dropped charge's too
            return (await books.state(12))["reserved_milli"] == 0

        await until(given_back, within=3)
        # The account is served and charged afterwards.
        again = await leases.take(account_id=12, amount_milli=UNIT, tier="basic")
        assert again is not None
        last = await leases.settle(again, charge_id="c12-again", charge_milli=450, usage_row=usage_row("r12-again"))
    finally:
        await leases.stop()
    try:
        assert [c is None for c in changes] == [False] * 4 + [True] + [False] * 4
        assert last is not None and last.charged_milli == 450
        for a in accounts:
            spent = sum(400 + i for i in range(3)) - (401 if a == 12 else 0) + (450 if a == 12 else 0)
            await books.assert_settled(100 * UNIT - spent, a)  # consistent, nothing parked
        from plugins.credits.tables import usage

        written = sorted(r.charge_id for r in await books.rows(usage))
        assert written == sorted([f"c{a}-{i}" for a in accounts for i in range(3) if (a, i) != (12, 1)] + ["c12-again"])
    finally:
        await db.close()


async def test_a_charge_and_usage_row_that_do_not_fit_are_clamped_and_written_with_the_others(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Straight to the leases, past the plugin's bound: a float charge and counts no column can hold are
    written clamped, in the batch with the other accounts' charges, instead of failing it."""
    from edge.db import Database
    from plugins.credits import lease_book
    from plugins.credits.tables import usage
    from tests.test_credits_leases import UNIT, Books, usage_row, worker

    monkeypatch.setattr(lease_book, "RETRY_SECONDS", 60)  # a failed batch would not be tried again in time
    db = Database(db_url)
    books = Books(db)
    for account in (31, 32):
        await books.ledger.credit(account_id=account, amount_milli=100 * UNIT, kind="grant", reference=f"f{account}")
    leases = worker(db, batch=0.05)
    try:
        good = await leases.take(account_id=31, amount_milli=UNIT, tier="basic")
        bad = await leases.take(account_id=32, amount_milli=UNIT, tier="basic")
        assert good is not None and bad is not None
        absurd = {**usage_row("r-bad"), "prompt_tokens": 10**30, "completion_tokens": -5, "status": "200"}
        changes = await asyncio.wait_for(
            asyncio.gather(
                leases.settle(good, charge_id="c-good", charge_milli=400, usage_row=usage_row("r-good")),
                leases.settle(bad, charge_id="c-bad", charge_milli=2.5e30, usage_row=absurd),  # type: ignore[arg-type]
            ),
            timeout=5,
        )
    finally:
        await leases.stop()
    try:
        assert [c.charged_milli if c else None for c in changes] == [400, UNIT]  # a charge that is no integer: the hold
        await books.assert_settled(100 * UNIT - 400, 31)
        await books.assert_settled(100 * UNIT - UNIT, 32)
        rows = {r.charge_id: r for r in await books.rows(usage)}
        assert (rows["c-bad"].prompt_tokens, rows["c-bad"].completion_tokens, rows["c-bad"].status) == (2**31 - 1, 0, 0)
        assert rows["c-bad"].cost_milli == UNIT and rows["c-good"].cost_milli == 400
    finally:
        await db.close()
