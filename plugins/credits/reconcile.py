"""`python -m edge reconcile`: every balance must equal the sum of its ledger, every ledger row must follow
from the one before it, `reserved` must equal the account's live holds, and every usage roll-up row the sums
of its usage rows (rollups.py). Prints what differs; exit 1. `python -m edge credits rollup-rebuild`
recomputes the roll-ups from the usage rows.

Safe on a live system: on MariaDB it reads one REPEATABLE READ snapshot, and on SQLite (one writer at a
time, row ids in commit order) the totals come from a single statement.
"""

from __future__ import annotations

import argparse
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from edge.cli import Command
from edge.gateway import Gateway
from plugins.credits import rollups
from plugins.credits.ledger import Ledger
from plugins.credits.rows import utcnow
from plugins.credits.tables import balances, holds, ledger, scope_holds, spend_scopes

_BATCH = 5000


async def find_differences(conn: AsyncConnection) -> tuple[int, list[str]]:
    """(accounts checked, one line per difference)."""
    problems: list[str] = []
    accounts = sa.union(
        sa.select(balances.c.account_id), sa.select(ledger.c.account_id), sa.select(holds.c.account_id)
    ).subquery("accounts")
    account = accounts.c.account_id
    ledger_sum = (
        sa.select(sa.func.coalesce(sa.func.sum(ledger.c.amount_milli), 0))
        .where(ledger.c.account_id == account)
        .scalar_subquery()
    )
    held = (
        sa.select(sa.func.coalesce(sa.func.sum(holds.c.amount_milli), 0))
        .where(holds.c.account_id == account)
        .scalar_subquery()
    )
    expired = (
        sa.select(sa.func.count()).where(holds.c.account_id == account, holds.c.expires_at < utcnow()).scalar_subquery()
    )
    query = (
        sa.select(account, balances.c.balance_milli, balances.c.reserved_milli, ledger_sum, held, expired)
        .select_from(accounts.outerjoin(balances, balances.c.account_id == account))
        .order_by(account)
    )
    rows = (await conn.execute(query)).all()
    for acc, balance, reserved, summed, held_sum, expired_count in rows:
        problems.extend(_account_problems(int(acc), balance, reserved, int(summed), int(held_sum), int(expired_count)))
    problems.extend(await _chain_problems(conn))
    problems.extend(await _scope_problems(conn))
    problems.extend(await rollups.differences(conn))
    return len(rows), problems


async def _scope_problems(conn: AsyncConnection) -> list[str]:
    """Every spend scope's `reserved_milli` equals what its live holds count against it (scopes.py), and
    every such count belongs to a live hold."""
    s, h = spend_scopes.c, scope_holds.c
    linked = (
        sa.select(sa.func.coalesce(sa.func.sum(h.amount_milli), 0))
        .where(h.kind == s.kind, h.scope_id == s.scope_id, h.period == s.period, h.period_start == s.period_start)
        .scalar_subquery()
    )
    query = sa.select(s.kind, s.scope_id, s.period, s.period_start, s.reserved_milli, linked).where(
        s.reserved_milli != linked
    )
    problems = [
        f"{kind} {scope_id} ({period} from {start}): reserved_milli {reserved} but its holds count {held}"
        for kind, scope_id, period, start, reserved, held in (await conn.execute(query)).all()
    ]
    orphans = sa.select(h.hold_id, h.kind, h.scope_id).where(h.hold_id.not_in(sa.select(holds.c.id)))
    for hold_id, kind, scope_id in (await conn.execute(orphans)).all():
        problems.append(f"{kind} {scope_id}: counts hold {hold_id}, which is gone")
    return problems


def _account_problems(account: int, balance: Any, reserved: Any, summed: int, held: int, expired: int) -> list[str]:
    if balance is None:
        return [
            f"account {account}: no balance row, but its ledger sums to {summed} and its holds to {held} "
            "milli-credits (orphaned rows)"
        ]
    out = []
    balance, reserved = int(balance), int(reserved)
    if balance != summed:
        out.append(
            f"account {account}: balance_milli is {balance} but its ledger sums to {summed} "
            f"(differs by {balance - summed})"
        )
    if reserved != held:
        out.append(
            f"account {account}: reserved_milli is {reserved} but its live holds sum to {held} "
            f"(differs by {reserved - held})"
        )
    if balance < 0 or balance - reserved < 0:
        out.append(f"account {account}: overspent: balance_milli {balance}, reserved_milli {reserved}")
    if expired:
        out.append(
            f"account {account}: {expired} hold(s) past their expiry, left by a stopped worker "
            "(the sweeper releases them; `reconcile --release-expired` does it now)"
        )
    return out


async def _chain_problems(conn: AsyncConnection) -> list[str]:
    """Each ledger row's balance_after must be the previous row's plus its amount, per account."""
    last: dict[int, int] = {}
    problems: list[str] = []
    after = 0
    while True:
        rows = (
            await conn.execute(
                sa.select(ledger.c.id, ledger.c.account_id, ledger.c.amount_milli, ledger.c.balance_after_milli)
                .where(ledger.c.id > after)
                .order_by(ledger.c.id)
                .limit(_BATCH)
            )
        ).all()
        for row_id, acc, amount, balance_after in rows:
            expected = last.get(int(acc), 0) + int(amount)
            if int(balance_after) != expected:
                problems.append(
                    f"account {acc}: ledger row {row_id} says balance_after_milli {balance_after} "
                    f"but the rows before it make {expected}"
                )
            last[int(acc)] = int(balance_after)
        if len(rows) < _BATCH:
            return problems
        after = int(rows[-1][0])


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--release-expired", action="store_true", help="release holds past their expiry first, as the sweeper would"
    )


async def run_reconcile(gateway: Gateway, args: argparse.Namespace) -> int:
    db = gateway.database
    if getattr(args, "release_expired", False):
        released = await Ledger(db, plans={}, low_percent=0).release_expired()
        print(f"released {released} expired hold(s)")
    async with db.connect() as plain:
        conn = plain if db.is_sqlite else await plain.execution_options(isolation_level="REPEATABLE READ")
        async with conn.begin():
            checked, problems = await find_differences(conn)
    for line in problems:
        print(line)
    print(f"reconcile: {checked} account(s) checked, {len(problems)} difference(s)")
    return 1 if problems else 0


def rollup_command() -> Command:
    """`python -m edge credits rollup-rebuild`: the usage roll-ups recomputed from the usage rows."""

    async def run(gateway: Gateway, args: argparse.Namespace) -> int:
        if args.credits_command != "rollup-rebuild":
            return 2
        async with gateway.database.begin() as conn:
            daily, monthly = await rollups.rebuild(conn)
        print(f"rollup-rebuild: {daily} daily and {monthly} monthly roll-up row(s) written from the usage rows")
        return 0

    def subcommands(parser: argparse.ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="credits_command", required=True)
        sub.add_parser(
            "rollup-rebuild",
            help="recompute usage_daily and usage_monthly from usage_records (stop the gateway first)",
        )

    return Command("credits", "credits operations: `rollup-rebuild`", run, subcommands)
