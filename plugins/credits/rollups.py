"""The usage roll-ups the admins' overview reads, kept in step with usage_records.

What stays true at every commit, on SQLite and MariaDB, whichever path settled the request:

- each roll-up row equals the sums of the usage rows it covers: the transaction that writes a usage row adds
  it to `usage_daily` (its day, model, route and shard) and to `usage_monthly` (its month and account), with
  the cost the row was finally written with. The three writers: hold_rows.settle on SQLite, the MariaDB
  procedure `credits_settle` (migration credits_0004), and lease_rows.write_batch on both;
- a roll-up row only ever grows by relative upserts (`ON CONFLICT DO UPDATE` / `ON DUPLICATE KEY UPDATE`),
  so concurrent settlements add up instead of overwriting each other;
- no row every account shares: `usage_daily` is split into SHARDS rows by `account_id % SHARDS`, and
  `usage_monthly` is per account, so settlements of different accounts rarely wait for one row lock.
  A batch upserts its rows in key order, after its balance rows, so two batches cannot deadlock on them.

`reconcile` compares both tables with sums of the usage rows (`differences`); `credits rollup-rebuild`
recomputes them from the usage rows (`rebuild`), for a database whose roll-ups were lost or edited by hand.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import date
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from plugins.credits.tables import usage, usage_daily, usage_monthly

# Few: the overview reads every shard of 31 days, and its time grows with them (about 15 ms at 16 shards,
# 5 at 4, 2 at 1, for a million usage rows). A shard row's lock is held from its upsert, the transaction's
# last statement, to the commit; with leases a batch writes one upsert per row for all its settlements.
SHARDS = 4
_SUMS = ("requests", "prompt_tokens", "completion_tokens", "charged_milli")
_DAILY_KEY = ("day", "model", "route", "shard")
_MONTHLY_KEY = ("month", "account_id")


def _upserts(table: sa.Table) -> dict[str, Any]:
    """The table's upsert that adds to the sums of an existing row, per dialect."""
    lite = sqlite.insert(table)
    maria = mysql.insert(table)
    return {
        "sqlite": lite.on_conflict_do_update(
            index_elements=[c for c in table.primary_key.columns],
            set_={name: table.c[name] + lite.excluded[name] for name in _SUMS},
        ),
        "mysql": maria.on_duplicate_key_update({name: table.c[name] + maria.inserted[name] for name in _SUMS}),
    }


_ADD = {"daily": _upserts(usage_daily), "monthly": _upserts(usage_monthly)}


def month_of(day: date) -> date:
    return day.replace(day=1)


def folded(rows: Iterable[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Usage rows (with `account_id` and their final `cost_milli`) summed per roll-up row, in key order."""
    daily: dict[tuple[Any, ...], list[int]] = {}
    monthly: dict[tuple[Any, ...], list[int]] = {}
    for row in rows:
        adds = (1, int(row["prompt_tokens"]), int(row["completion_tokens"]), int(row["cost_milli"]))
        account = int(row["account_id"])
        for into, key in (
            (daily, (row["day"], row["model"], row["route"], account % SHARDS)),
            (monthly, (month_of(row["day"]), account)),
        ):
            sums = into.setdefault(key, [0, 0, 0, 0])
            for i, n in enumerate(adds):
                sums[i] += n
    return (
        [dict(zip((*_DAILY_KEY, *_SUMS), (*k, *v), strict=True)) for k, v in sorted(daily.items())],
        [dict(zip((*_MONTHLY_KEY, *_SUMS), (*k, *v), strict=True)) for k, v in sorted(monthly.items())],
    )


async def add(conn: AsyncConnection, rows: Iterable[Mapping[str, Any]]) -> None:
    """Add settled usage rows to the roll-ups, in the caller's transaction (the one writing the rows)."""
    daily, monthly = folded(rows)
    dialect = conn.dialect.name
    if monthly:
        await conn.execute(_ADD["monthly"][dialect], monthly)
    if daily:
        await conn.execute(_ADD["daily"][dialect], daily)


# ---- rebuilding and checking them from the usage rows ------------------------------------------------------


def _month_sql(dialect: str, day: Any) -> ColumnElement[Any]:
    if dialect == "sqlite":
        return sa.type_coerce(sa.func.date(day, "start of month"), sa.Date())
    return sa.func.date_sub(day, sa.text("INTERVAL (DAYOFMONTH(usage_records.day) - 1) DAY"))


def _usage_sums(dialect: str) -> tuple[sa.Select[Any], sa.Select[Any]]:
    """Sums of usage_records per roll-up row: (daily, monthly), each in its table's column order."""
    u = usage.c
    sums = (sa.func.count(), sa.func.sum(u.prompt_tokens), sa.func.sum(u.completion_tokens), sa.func.sum(u.cost_milli))
    shard = (u.account_id % SHARDS).label("shard")
    month = _month_sql(dialect, u.day).label("month")
    daily = sa.select(u.day, u.model, u.route, shard, *sums).group_by(u.day, u.model, u.route, shard)
    monthly = sa.select(month, u.account_id, *sums).group_by(month, u.account_id)
    return daily, monthly


async def rebuild(conn: AsyncConnection) -> tuple[int, int]:
    """Replace both roll-ups with the sums of the usage rows, in the caller's transaction: (daily rows,
    monthly rows). Settlements running meanwhile would be counted twice or not at all: run it with the
    gateway stopped."""
    daily, monthly = _usage_sums(conn.dialect.name)
    counts = []
    for table, select, key in ((usage_daily, daily, _DAILY_KEY), (usage_monthly, monthly, _MONTHLY_KEY)):
        await conn.execute(table.delete())
        done = await conn.execute(table.insert().from_select([*key, *_SUMS], select))
        counts.append(int(done.rowcount))
    return counts[0], counts[1]


def _by_key(rows: Iterable[Any], width: int) -> dict[tuple[Any, ...], tuple[int, ...]]:
    out: dict[tuple[Any, ...], tuple[int, ...]] = {}
    for row in rows:
        key = tuple(row[:width])
        key = (date.fromisoformat(key[0]) if isinstance(key[0], str) else key[0], *key[1:])
        out[key] = tuple(int(n or 0) for n in row[width:])
    return out


async def differences(conn: AsyncConnection) -> list[str]:
    """One line per roll-up row that differs from the sums of its usage rows (or is missing, or extra)."""
    problems: list[str] = []
    daily, monthly = _usage_sums(conn.dialect.name)
    for table, select, key in ((usage_daily, daily, _DAILY_KEY), (usage_monthly, monthly, _MONTHLY_KEY)):
        width = len(key)
        want = _by_key((await conn.execute(select)).all(), width)
        have = _by_key((await conn.execute(sa.select(*(table.c[k] for k in (*key, *_SUMS))))).all(), width)
        for k in sorted(want.keys() | have.keys(), key=repr):
            if want.get(k) != have.get(k):
                named = ", ".join(f"{n} {v}" for n, v in zip(key, k, strict=True))
                problems.append(
                    f"{table.name} ({named}): (requests, prompt, completion, charged_milli) is "
                    f"{have.get(k, 'missing')} but its usage rows sum to {want.get(k, 'nothing')}"
                )
    return problems
