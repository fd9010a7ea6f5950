"""Leases: a worker's room on an account, holds taken from it in memory, settlements written in batches.

Every case runs on SQLite and on MariaDB. The money rules are the same as without leases: nothing is
spent that the database has not reserved, every request has its usage and ledger row, reserved_milli
always equals the live hold rows and the balance the sum of its ledger.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from edge.db import Database
from plugins.credits import lease_book
from plugins.credits import leases as leases_module
from plugins.credits.leases import Leases
from plugins.credits.ledger import Ledger
from plugins.credits.reconcile import run_reconcile
from plugins.credits.rows import utcnow
from plugins.credits.tables import holds
from tests.support.auth import TokenAuth, bearer
from tests.support.bodies import chat_body
from tests.support.credits import credits_config, table_rows

START = 1_000_000
UNIT = 1_000
ACCOUNT = 7


def usage_row(request_id: str) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "user_id": None,
        "key_id": None,
        "model": "llama3.2:3b",
        "endpoint": "chat",
        "route": "local",
        "upstream": "ollama",
        "stream": False,
        "prompt_tokens": 10,
        "completion_tokens": 20,
        "usage_source": "upstream",
        "multiplier": 1,
        "status": 200,
        "outcome": "ok",
        "latency_ms": 5,
        "ttft_ms": None,
        "day": utcnow().date(),
    }


class Books:
    """The database as any worker sees it: one account, its rows and its balance."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.ledger = Ledger(db, plans={}, low_percent=20)

    async def fund(self, amount: int, account: int = ACCOUNT) -> None:
        await self.ledger.credit(account_id=account, amount_milli=amount, kind="grant", reference=f"fund-{amount}")

    async def state(self, account: int = ACCOUNT) -> dict[str, int]:
        return await self.ledger.state(account)

    async def rows(self, table: Any) -> list[Any]:
        async with self.db.connect() as conn:
            return list((await conn.execute(sa.select(table))).all())

    async def assert_consistent(self, account: int = ACCOUNT) -> dict[str, int]:
        """reserved = the live holds' sum, balance = the ledger's sum, never overspent."""
        from plugins.credits.tables import ledger

        state = await self.state(account)
        held = sum(int(r.amount_milli) for r in await self.rows(holds) if r.account_id == account)
        summed = sum(int(r.amount_milli) for r in await self.rows(ledger) if r.account_id == account)
        assert state["reserved_milli"] == held, (state, held)
        assert state["balance_milli"] == summed, (state, summed)
        assert state["available_milli"] >= 0 and state["balance_milli"] >= 0, state
        return state

    async def assert_settled(self, balance: int, account: int = ACCOUNT) -> None:
        """Consistent, with `balance` left and no room held by anyone."""
        state = await self.assert_consistent(account)
        assert (state["balance_milli"], state["reserved_milli"]) == (balance, 0), state


def worker(db: Database, *, batch: float = 0.02, idle: float = 0.1, requests: int = 4) -> Leases:
    return Leases(
        Ledger(db, plans={}, low_percent=20),
        requests=requests,
        batch_seconds=batch,
        idle_seconds=idle,
        ttl_seconds=150,
    )


@pytest.fixture
async def books(db_url: str) -> AsyncIterator[Books]:
    db = Database(db_url)
    try:
        yield Books(db)
    finally:
        await db.close()


async def until(check: Any, within: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_holds_come_from_room_reserved_in_the_database(books: Books) -> None:
    await books.fund(100 * UNIT)
    leases = worker(books.db, requests=4)
    try:
        first = await leases.take(account_id=ACCOUNT, amount_milli=UNIT, tier="basic")
        assert first is not None
        # One hold row for the lease: the request's hold plus room for 4 more like it.
        [row] = await books.rows(holds)
        assert row.amount_milli == 5 * UNIT and row.request_id.startswith("lease ")
        state = await books.assert_consistent()
        assert state["reserved_milli"] == 5 * UNIT
        # The next four come from that room without touching the database.
        for _ in range(4):
            again = await leases.take(account_id=ACCOUNT, amount_milli=UNIT, tier="basic")
            assert again is not None and again.lease is first.lease
        assert [r.amount_milli for r in await books.rows(holds)] == [5 * UNIT]
        assert leases.spare(ACCOUNT) == 0
    finally:
        await leases.stop()


async def test_settlements_are_written_together_each_with_its_rows(
    books: Books, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches: list[int] = []
    real = lease_book.write_batch

    async def counted(db: Database, **kwargs: Any) -> Any:
        batches.append(len(kwargs["charges"]))
        return await real(db, **kwargs)

    monkeypatch.setattr(lease_book, "write_batch", counted)
    await books.fund(100 * UNIT)
    leases = worker(books.db, batch=0.05)
    try:
        taken = [await leases.take(account_id=ACCOUNT, amount_milli=UNIT, tier="basic") for _ in range(10)]
        changes = await asyncio.gather(
            *(
                leases.settle(lease, charge_id=f"c{i:02d}", charge_milli=300 + i, usage_row=usage_row(f"r{i}"))
                for i, lease in enumerate(taken)
                if lease is not None
            )
        )
    finally:
        await leases.stop()
    assert batches[0] == 10, batches  # all ten in the first transaction
    spent = sum(300 + i for i in range(10))
    assert [c.charged_milli for c in changes if c] == [300 + i for i in range(10)]
    assert changes[-1] is not None and changes[-1].balance_milli == 100 * UNIT - spent
    from plugins.credits.tables import ledger, usage

    assert sorted(r.charge_id for r in await books.rows(usage)) == [f"c{i:02d}" for i in range(10)]
    entries = [r for r in await books.rows(ledger) if r.kind == "usage"]
    assert sorted(r.reference for r in entries) == [f"c{i:02d}" for i in range(10)]
    # Each ledger row's balance_after follows from the one before it.
    balance = 100 * UNIT
    for entry in sorted(entries, key=lambda r: r.id):
        balance += entry.amount_milli
        assert entry.balance_after_milli == balance
    state = await books.assert_consistent()
    assert state == {
        "account_id": ACCOUNT,
        "balance_milli": 100 * UNIT - spent,
        "reserved_milli": 0,  # stopping gave the lease back
        "available_milli": 100 * UNIT - spent,
    }
    assert await books.rows(holds) == []


async def test_an_idle_lease_gives_its_room_back(books: Books) -> None:
    await books.fund(100 * UNIT)
    leases = worker(books.db, idle=0.1)
    try:
        lease = await leases.take(account_id=ACCOUNT, amount_milli=UNIT, tier="basic")
        assert lease is not None
        await leases.settle(lease, charge_id="c1", charge_milli=UNIT, usage_row=usage_row("r1"))
        # Written, and the lease keeps its room a while for the account's next request.
        state = await books.assert_consistent()
        assert state["balance_milli"] == 99 * UNIT and state["reserved_milli"] > 0

        async def released() -> bool:
            return (await books.state())["reserved_milli"] == 0

        await until(released)
        assert await books.rows(holds) == []
        await books.assert_consistent()
        # A later request starts a new lease.
        assert await leases.take(account_id=ACCOUNT, amount_milli=UNIT, tier="basic") is not None
        assert len(await books.rows(holds)) == 1
    finally:
        await leases.stop()


async def test_two_workers_never_hold_more_than_the_balance(books: Books) -> None:
    await books.fund(10 * UNIT)
    a, b = worker(books.db, requests=8), worker(books.db, requests=8)
    try:
        results = await asyncio.gather(
            *(
                (a if i % 2 else b).take(account_id=ACCOUNT, amount_milli=UNIT, tier="basic", patient=False)
                for i in range(30)
            )
        )
        taken = [(w, lease) for w, lease in zip([b, a] * 15, results, strict=True) if lease is not None]
        # Room is kept in whole holds, so all ten the balance pays for are served, and not one more.
        assert len(taken) == 10
        state = await books.assert_consistent()
        assert state["reserved_milli"] == 10 * UNIT and state["available_milli"] == 0
        await asyncio.gather(
            *(
                w.settle(lease, charge_id=f"c{i}", charge_milli=UNIT, usage_row=usage_row(f"r{i}"))
                for i, (w, lease) in enumerate(taken)
            )
        )
    finally:
        await a.stop()
        await b.stop()
    await books.assert_settled(0)


async def test_room_parked_in_another_worker_is_waited_for_not_refused(books: Books) -> None:
    await books.fund(10 * UNIT)
    a, b = worker(books.db, idle=0.1, requests=8), worker(books.db, idle=0.1, requests=8)
    try:
        lease = await a.take(account_id=ACCOUNT, amount_milli=UNIT, tier="basic")
        assert lease is not None
        await a.settle(lease, charge_id="a1", charge_milli=UNIT, usage_row=usage_row("a1"))
        assert a.spare(ACCOUNT) > 0  # worker a keeps room for its next request
        # Worker b needs the whole balance that is left: it waits for a to give its idle room back.
        whole = await b.take(account_id=ACCOUNT, amount_milli=9 * UNIT, tier="basic")
        assert whole is not None
        assert (await books.assert_consistent())["available_milli"] == 0
        # Nothing more is left for anyone, patient or not.
        assert await a.take(account_id=ACCOUNT, amount_milli=UNIT, tier="basic", patient=False) is None
        await b.settle(whole, charge_id="b1", charge_milli=9 * UNIT, usage_row=usage_row("b1"))
    finally:
        await a.stop()
        await b.stop()
    await books.assert_settled(0)


async def test_stopping_writes_what_is_settled_and_returns_the_room(books: Books) -> None:
    await books.fund(100 * UNIT)
    leases = worker(books.db, batch=5.0, idle=30.0)  # nothing would be written for a long while
    lease = await leases.take(account_id=ACCOUNT, amount_milli=UNIT, tier="basic")
    assert lease is not None
    settling = asyncio.ensure_future(leases.settle(lease, charge_id="c1", charge_milli=700, usage_row=usage_row("r1")))
    await asyncio.sleep(0.05)
    assert not settling.done()
    await leases.stop()
    change = await settling
    assert change is not None and change.charged_milli == 700
    await books.assert_settled(100 * UNIT - 700)


async def test_a_lease_the_sweeper_released_charges_nothing_and_is_replaced(books: Books) -> None:
    await books.fund(100 * UNIT)
    leases = worker(books.db, idle=30.0)
    try:
        lease = await leases.take(account_id=ACCOUNT, amount_milli=UNIT, tier="basic")
        assert lease is not None
        # The worker looked dead for longer than the lease lives: the sweeper releases its row.
        assert await books.ledger.release_expired(now=utcnow() + timedelta(days=1)) == 1
        change = await leases.settle(lease, charge_id="c1", charge_milli=UNIT, usage_row=usage_row("r1"))
        assert change is None  # as for a request whose hold was released: not charged
        await books.assert_settled(100 * UNIT)
        fresh = await leases.take(account_id=ACCOUNT, amount_milli=UNIT, tier="basic")
        assert fresh is not None and fresh.lease.id != lease.lease.id
        assert [r.id for r in await books.rows(holds)] == [fresh.lease.id]
        await books.assert_consistent()
    finally:
        await leases.stop()


async def test_a_failed_batch_is_written_by_the_next_attempt(books: Books, monkeypatch: pytest.MonkeyPatch) -> None:
    real = lease_book.write_batch
    failures = [sa.exc.OperationalError("INSERT", {}, Exception("server has gone away"))]

    async def flaky(db: Database, **kwargs: Any) -> Any:
        if failures:
            raise failures.pop()
        return await real(db, **kwargs)

    monkeypatch.setattr(lease_book, "write_batch", flaky)
    monkeypatch.setattr(lease_book, "RETRY_SECONDS", 0.05)
    await books.fund(100 * UNIT)
    leases = worker(books.db)
    try:
        lease = await leases.take(account_id=ACCOUNT, amount_milli=UNIT, tier="basic")
        assert lease is not None
        change = await leases.settle(lease, charge_id="c1", charge_milli=400, usage_row=usage_row("r1"))
        assert change is not None and change.charged_milli == 400 and not failures
    finally:
        await leases.stop()
    from plugins.credits.tables import usage

    assert [r.charge_id for r in await books.rows(usage)] == ["c1"]
    await books.assert_settled(100 * UNIT - 400)


async def test_a_take_cancelled_while_growing_leaves_no_room_in_use(books: Books) -> None:
    await books.fund(100 * UNIT)
    leases = worker(books.db, idle=0.1)
    try:
        taking = asyncio.ensure_future(leases.take(account_id=ACCOUNT, amount_milli=UNIT, tier="basic"))
        await asyncio.sleep(0)  # the grow has started
        taking.cancel()
        with pytest.raises(asyncio.CancelledError):
            await taking

        async def leased() -> bool:
            return bool(await books.rows(holds))

        async def released() -> bool:
            return not await books.rows(holds)

        # The grow commits all the same; its hold goes back to the lease, which then goes idle.
        await until(leased)
        await until(released)
        await books.assert_settled(100 * UNIT)
    finally:
        await leases.stop()


async def test_served_requests_with_leases_are_each_billed_and_reconcile(
    db_url: str, ollama: Any, serve: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    config = credits_config(
        ollama_url=ollama.url, database_url=db_url, lease_requests=32, settle_batch_ms=20, lease_idle_ms=100
    )
    async with serve(config, plugins=[TokenAuth()]) as served:
        gateway = served.gateway
        await gateway.plugin("credits").grant(account_id=1, amount_milli=START, kind="grant", reference="seed")

        async def chat(i: int) -> Any:
            async with served.request(
                "POST",
                "/v1/chat/completions",
                data=chat_body(),
                headers={"content-type": "application/json", "x-request-id": f"lease-{i}", **bearer(1)},
            ) as r:
                assert r.status == 200
                return await r.json()

        answers = await asyncio.gather(*(chat(i) for i in range(12)))

        async def settled() -> bool:
            return len(await table_rows(gateway, "usage", account_id=1)) == 12 and not await table_rows(
                gateway, "holds", account_id=1
            )

        await until(settled)
        usage = await table_rows(gateway, "usage", account_id=1)
        assert sorted(u["request_id"] for u in usage) == sorted(f"lease-{i}" for i in range(12))
        assert sorted(u["cost_milli"] for u in usage) == sorted(a["usage"]["total_tokens"] for a in answers)
        state = await gateway.plugin("credits").balance(1)
        assert state["reserved_milli"] == 0
        assert state["balance_milli"] == START - sum(u["cost_milli"] for u in usage)
        code = await run_reconcile(gateway, argparse.Namespace(release_expired=False))
        assert code == 0, capsys.readouterr().out


async def test_growing_a_lease_the_sweeper_released_starts_a_new_one(books: Books) -> None:
    await books.fund(100 * UNIT)
    leases = worker(books.db, idle=30.0, requests=1)
    try:
        first = await leases.take(account_id=ACCOUNT, amount_milli=UNIT, tier="basic")
        assert first is not None
        assert await books.ledger.release_expired(now=utcnow() + timedelta(days=1)) == 1
        # More than the lost lease's spare room: the grow finds its row gone and starts a new lease at once.
        bigger = await leases.take(account_id=ACCOUNT, amount_milli=5 * UNIT, tier="basic", patient=False)
        assert bigger is not None and bigger.lease is not first.lease
        assert [r.id for r in await books.rows(holds)] == [bigger.lease.id]
        await books.assert_consistent()
        assert await leases.settle(first, charge_id="c1", charge_milli=UNIT, usage_row=usage_row("r1")) is None
        change = await leases.settle(bigger, charge_id="c2", charge_milli=2 * UNIT, usage_row=usage_row("r2"))
        assert change is not None and change.balance_milli == 98 * UNIT
    finally:
        await leases.stop()
    await books.assert_settled(98 * UNIT)


async def test_a_ticket_settled_many_times_at_once_is_charged_once(books: Books) -> None:
    await books.fund(100 * UNIT)
    leases = worker(books.db)
    try:
        ticket = await leases.take(account_id=ACCOUNT, amount_milli=UNIT, tier="basic")
        assert ticket is not None
        changes = await asyncio.gather(
            *(leases.settle(ticket, charge_id="c1", charge_milli=600, usage_row=usage_row("r1")) for _ in range(5))
        )
        assert [c.charged_milli for c in changes if c is not None] == [600]
    finally:
        await leases.stop()
    await books.assert_settled(100 * UNIT - 600)


async def test_a_database_that_fails_while_a_lease_grows_answers_503_and_nothing_runs_unpaid(
    db_url: str, ollama: Any, serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pymysql

    async def lost(db: Database, **_: Any) -> Any:
        if db.is_sqlite:
            raise sa.exc.OperationalError("UPDATE", {}, Exception("disk I/O error"))
        raise pymysql.err.OperationalError(2013, "Lost connection to MySQL server during query")

    config = credits_config(ollama_url=ollama.url, database_url=db_url, lease_requests=32)
    async with serve(config, plugins=[TokenAuth()]) as served:
        plugin = served.gateway.plugin("credits")
        await plugin.grant(account_id=3, amount_milli=START, kind="grant", reference="seed-3")
        monkeypatch.setattr(leases_module, "grow", lost)
        async with served.request(
            "POST",
            "/v1/chat/completions",
            data=chat_body(),
            headers={"content-type": "application/json", **bearer(3)},
        ) as resp:
            status, headers, data = resp.status, resp.headers, await resp.json()
        monkeypatch.undo()
        state = await plugin.balance(3)
    assert status == 503 and headers["retry-after"] == "5"
    assert data["error"]["code"] == "billing_unavailable"
    assert "MySQL" not in data["error"]["message"] and "disk" not in data["error"]["message"]
    assert ollama.arrivals == 0
    assert state["balance_milli"] == START and state["reserved_milli"] == 0


async def test_a_batch_whose_commit_reported_an_error_after_going_through_is_not_written_twice(
    books: Books, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = lease_book.write_batch
    failures = [sa.exc.OperationalError("COMMIT", {}, Exception("Lost connection to server during query"))]

    async def lost_after_commit(db: Database, **kwargs: Any) -> Any:
        written = await real(db, **kwargs)
        if failures:
            raise failures.pop()
        return written

    monkeypatch.setattr(lease_book, "write_batch", lost_after_commit)
    monkeypatch.setattr(lease_book, "RETRY_SECONDS", 0.05)
    await books.fund(100 * UNIT)
    leases = worker(books.db)
    try:
        ticket = await leases.take(account_id=ACCOUNT, amount_milli=UNIT, tier="basic")
        assert ticket is not None
        # Written, but the worker cannot tell what it did: no balance to report.
        assert await leases.settle(ticket, charge_id="c1", charge_milli=400, usage_row=usage_row("r1")) is None
        again = await leases.take(account_id=ACCOUNT, amount_milli=UNIT, tier="basic")
        assert again is not None
        change = await leases.settle(again, charge_id="c2", charge_milli=500, usage_row=usage_row("r2"))
        assert change is not None and change.balance_milli == 100 * UNIT - 900
    finally:
        await leases.stop()
    from plugins.credits.tables import usage

    assert sorted(r.charge_id for r in await books.rows(usage)) == ["c1", "c2"]
    await books.assert_settled(100 * UNIT - 900)


async def test_an_upstream_failure_is_answered_without_waiting_for_the_batch(
    db_url: str, ollama: Any, serve: Any
) -> None:
    ollama.settings.fail_status = 500
    ollama.settings.fail_times = 1
    config = credits_config(
        ollama_url=ollama.url, database_url=db_url, lease_requests=32, settle_batch_ms=1000, lease_idle_ms=100
    )
    async with serve(config, plugins=[TokenAuth()]) as served:
        gateway = served.gateway
        await gateway.plugin("credits").grant(account_id=1, amount_milli=START, kind="grant", reference="seed")
        started = asyncio.get_running_loop().time()
        async with served.request(
            "POST",
            "/v1/chat/completions",
            data=chat_body(),
            headers={"content-type": "application/json", **bearer(1)},
        ) as r:
            status, body = r.status, await r.json()
        elapsed = asyncio.get_running_loop().time() - started
        assert status >= 500 and "error" in body
        assert elapsed < 0.5, elapsed  # not held back by the 1 s batch

        async def recorded() -> bool:
            rows = await table_rows(gateway, "usage", account_id=1)
            return len(rows) == 1 and not await table_rows(gateway, "holds", account_id=1)

        await until(recorded)
        [row] = await table_rows(gateway, "usage", account_id=1)
        assert row["cost_milli"] == 0 and row["usage_source"] == "none"
        assert (await gateway.plugin("credits").balance(1)) == {
            "account_id": 1,
            "balance_milli": START,
            "reserved_milli": 0,
            "available_milli": START,
        }
