"""Spend limits on API keys: set on POST/PATCH /api/keys, shown by GET, enforced at reserve time against the
ledger's holds (402 `key_limit_reached`), per Asia/Kuwait day, calendar month or in total, and shown by
GET /v1/account. On SQLite and MariaDB, with a hold per request and with leases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from edge.services import SpendLimit
from plugins.credits import scopes
from plugins.credits.tables import scope_holds, spend_scopes
from tests.support.bodies import chat_body
from tests.support.clock import ManualClock
from tests.support.credits import credits_config, table_rows, until_settled
from tests.support.portal import LoggedIn, auth_plugin_entry, bearer, register_user

KUWAIT = timedelta(hours=3)  # Asia/Kuwait has no daylight saving time
# llama3.2:3b on basic: 1x, no cloud fallback. A 10-token cap is also the floor, so no budget is lowered.
BODY = chat_body(max_tokens=10)
HOLD = len(BODY) + 10
FUNDS = 10**9
LEASES = pytest.mark.parametrize("lease_requests", [0, 32], ids=["holds", "leases"])


def config(ollama: Any, db_url: str, **settings: Any) -> dict[str, Any]:
    return credits_config(ollama_url=ollama.url, database_url=db_url, extra_plugins=[auth_plugin_entry()], **settings)


async def funded_user(served: Any) -> LoggedIn:
    user = await register_user(served, locale="en")
    await served.gateway.plugin("credits").grant(
        account_id=user.account_id, amount_milli=FUNDS, kind="grant", reference=f"seed-{user.account_id}"
    )
    return user


async def new_key(served: Any, user: LoggedIn, **fields: Any) -> tuple[int, dict[str, Any]]:
    body = {"name": "limited", "scopes": ["read", "write"], **fields}
    async with served.request("POST", "/api/keys", json=body, headers=user.headers) as r:
        return r.status, await r.json()


async def patch(served: Any, user: LoggedIn, key_id: int, body: Any) -> tuple[int, dict[str, Any]]:
    async with served.request("PATCH", f"/api/keys/{key_id}", json=body, headers=user.headers) as r:
        return r.status, await r.json()


async def chat(served: Any, secret: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    headers = {"content-type": "application/json", **bearer(secret)}
    async with served.request("POST", "/v1/chat/completions", data=BODY, headers=headers) as r:
        return r.status, await r.json(), dict(r.headers)


async def spent_by(served: Any, key_id: int) -> int:
    return sum(u["cost_milli"] for u in await table_rows(served.gateway, "usage", key_id=key_id))


async def until_refused(served: Any, secret: str, *, most: int = 50) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Requests one after another until one is refused: (how many were served, its error, its headers)."""
    for served_count in range(most):
        status, body, headers = await chat(served, secret)
        if status != 200:
            assert status == 402, body
            return served_count, body["error"], headers
        await until_settled(served.gateway)
    raise AssertionError(f"{most} requests served under the limit")


# ---- the key's fields ---------------------------------------------------------------------------------------


async def test_a_key_carries_its_limit_and_period_and_get_shows_them(db_url: str, ollama: Any, serve: Any) -> None:
    async with serve(config(ollama, db_url)) as served:
        user = await register_user(served)
        status, created = await new_key(served, user, limit_milli=5000, limit_period="day")
        assert status == 201
        assert (created["key"]["limit_milli"], created["key"]["limit_period"]) == (5000, "day")
        # A limit without a period never resets, as OpenRouter's; a key without one has neither.
        _, total = await new_key(served, user, limit_milli=7000)
        _, plain = await new_key(served, user)
        async with served.request("GET", "/api/keys", headers=user.headers) as r:
            listed = {k["id"]: k for k in (await r.json())["data"]}
    assert (listed[created["key"]["id"]]["limit_milli"], listed[created["key"]["id"]]["limit_period"]) == (5000, "day")
    assert (listed[total["key"]["id"]]["limit_milli"], listed[total["key"]["id"]]["limit_period"]) == (7000, "total")
    assert (listed[plain["key"]["id"]]["limit_milli"], listed[plain["key"]["id"]]["limit_period"]) == (None, None)


HOSTILE = [
    ({"limit_milli": True}, "limit_milli", "limit_milli_invalid"),
    ({"limit_milli": 1000.0}, "limit_milli", "limit_milli_invalid"),
    ({"limit_milli": "1000"}, "limit_milli", "limit_milli_invalid"),
    ({"limit_milli": 10**20}, "limit_milli", "limit_milli_invalid"),  # past 64 bits: JSON decodes a float
    ({"limit_milli": -5}, "limit_milli", "limit_milli_out_of_range"),
    ({"limit_milli": 0}, "limit_milli", "limit_milli_out_of_range"),
    ({"limit_milli": 10**15 + 1}, "limit_milli", "limit_milli_out_of_range"),
    ({"limit_milli": 5000, "limit_period": "week"}, "limit_period", "limit_period_invalid"),
    ({"limit_milli": 5000, "limit_period": "DAY"}, "limit_period", "limit_period_invalid"),
    ({"limit_milli": 5000, "limit_period": ["day"]}, "limit_period", "limit_period_invalid"),
    ({"limit_period": "day"}, "limit_period", "limit_period_without_limit"),
    ({"limit_milli": None, "limit_period": "month"}, "limit_period", "limit_period_without_limit"),
]


@pytest.mark.parametrize(("fields", "field", "code"), HOSTILE)
async def test_hostile_limits_are_the_one_422_on_create_and_on_patch(
    db_url: str, ollama: Any, serve: Any, fields: dict[str, Any], field: str, code: str
) -> None:
    async with serve(config(ollama, db_url)) as served:
        user = await register_user(served)
        status, created = await new_key(served, user, **fields)
        assert status == 422 and created["error"]["code"] == code
        assert created["error"]["fields"][field]["code"] == code
        _, plain = await new_key(served, user)
        status, patched = await patch(served, user, plain["key"]["id"], fields)
        assert status == 422 and patched["error"]["fields"][field]["code"] == code
        status, other = await patch(served, user, plain["key"]["id"], {"name": "renamed"})
        assert status == 422 and other["error"]["fields"]["name"]["code"] == "field_unknown"
        async with served.request("GET", "/api/keys", headers=user.headers) as r:
            keys = (await r.json())["data"]
    assert [(k["limit_milli"], k["limit_period"]) for k in keys] == [(None, None)]


async def test_another_accounts_key_is_404_and_keeps_its_limit(db_url: str, ollama: Any, serve: Any) -> None:
    async with serve(config(ollama, db_url)) as served:
        owner, stranger = await register_user(served), await register_user(served)
        _, created = await new_key(served, owner, limit_milli=5000, limit_period="day")
        key_id = created["key"]["id"]
        for body in ({"limit_milli": None}, {"limit_milli": 10**15}):
            status, answer = await patch(served, stranger, key_id, body)
            assert status == 404 and answer["error"]["code"] == "key_not_found"
        status, answer = await patch(served, owner, 2**63, {"limit_milli": None})
        assert status == 404 and answer["error"]["code"] == "key_not_found"
        async with served.request("GET", "/api/keys", headers=owner.headers) as r:
            key = (await r.json())["data"][0]
    assert (key["limit_milli"], key["limit_period"]) == (5000, "day")


# ---- enforcement ----------------------------------------------------------------------------------------------


@LEASES
async def test_a_daily_limit_refuses_with_402_until_kuwait_midnight_then_serves_again(
    db_url: str, ollama: Any, serve: Any, lease_requests: int
) -> None:
    clock = ManualClock()
    async with serve(config(ollama, db_url, lease_requests=lease_requests), clock=clock) as served:
        user = await funded_user(served)
        limit = HOLD * 3
        _, created = await new_key(served, user, limit_milli=limit, limit_period="day")
        key_id, secret = created["key"]["id"], created["secret"]
        count, error, headers = await until_refused(served, secret)
        spent = await spent_by(served, key_id)
        # Served while what it spent and this hold fitted; refused once the next hold would pass the limit.
        assert count >= 3 and spent <= limit < spent + HOLD
        now = datetime.fromtimestamp(clock.time(), UTC).replace(tzinfo=None)
        midnight = datetime.combine((now + KUWAIT).date() + timedelta(days=1), datetime.min.time()) - KUWAIT
        assert headers["x-should-retry"] == "false"
        assert error["code"] == "key_limit_reached" and error["type"] == "insufficient_quota"
        assert (error["limit"], error["period"], error["resets_at"]) == (limit, "day", midnight.isoformat() + "Z")
        assert f"{limit // 1000}.{limit % 1000:03d} credits" in error["message"]
        assert midnight.isoformat() + "Z" in error["message"] and "daily" in error["message"]
        # The account still has credit: only the key is refused, and no credits.exhausted is marked for it.
        assert (await table_rows(served.gateway, "balances", account_id=user.account_id))[0][
            "exhausted_notified"
        ] is False
        # One second before midnight in Kuwait: still today. At midnight: a new day, a new allowance.
        clock.advance((midnight - now).total_seconds() - 1)
        assert (await chat(served, secret))[0] == 402
        clock.advance(1)
        status, _, _ = await chat(served, secret)
        assert status == 200
        await until_settled(served.gateway)
        async with served.gateway.database.connect() as conn:
            rows = (await conn.execute(sa.select(spend_scopes).order_by(spend_scopes.c.period_start))).all()
            links = (await conn.execute(sa.select(scope_holds))).all()
    assert [(r.kind, r.scope_id, r.period) for r in rows] == [("key", key_id, "day")] * 2
    assert rows[0].spent_milli == spent and rows[0].reserved_milli == rows[1].reserved_milli == 0
    assert rows[1].period_start == rows[0].period_start + timedelta(days=1) and 0 < rows[1].spent_milli <= HOLD
    assert links == []


@LEASES
async def test_a_total_limit_never_resets_and_a_monthly_one_resets_on_the_first(
    db_url: str, ollama: Any, serve: Any, lease_requests: int
) -> None:
    clock = ManualClock()
    async with serve(config(ollama, db_url, lease_requests=lease_requests), clock=clock) as served:
        user = await funded_user(served)
        _, total = await new_key(served, user, limit_milli=HOLD * 2, limit_period="total")
        _, month = await new_key(served, user, limit_milli=HOLD * 2, limit_period="month")
        _, error, _ = await until_refused(served, total["secret"])
        assert error["resets_at"] is None and error["period"] == "total" and "does not reset" in error["message"]
        _, error, _ = await until_refused(served, month["secret"])
        now = datetime.fromtimestamp(clock.time(), UTC).replace(tzinfo=None) + KUWAIT
        first = (now.date().replace(day=1) + timedelta(days=32)).replace(day=1)
        assert error["resets_at"] == (datetime.combine(first, datetime.min.time()) - KUWAIT).isoformat() + "Z"
        clock.advance((datetime.combine(first, datetime.min.time()) - now).total_seconds())
        assert (await chat(served, month["secret"]))[0] == 200
        assert (await chat(served, total["secret"]))[0] == 402


async def test_a_key_without_a_limit_touches_no_scope_and_a_limit_does_not_limit_other_keys(
    db_url: str, ollama: Any, serve: Any
) -> None:
    async with serve(config(ollama, db_url)) as served:
        user = await funded_user(served)
        _, limited = await new_key(served, user, limit_milli=HOLD, limit_period="day")
        _, plain = await new_key(served, user)
        for _ in range(3):
            assert (await chat(served, plain["secret"]))[0] == 200
        await until_settled(served.gateway)
        async with served.gateway.database.connect() as conn:
            assert (await conn.execute(sa.select(spend_scopes))).all() == []
        await until_refused(served, limited["secret"])
        assert (await chat(served, plain["secret"]))[0] == 200


async def test_spend_before_a_limit_was_set_counts_in_its_period(db_url: str, ollama: Any, serve: Any) -> None:
    async with serve(config(ollama, db_url)) as served:
        user = await funded_user(served)
        _, created = await new_key(served, user)
        key_id, secret = created["key"]["id"], created["secret"]
        for _ in range(2):
            assert (await chat(served, secret))[0] == 200
            await until_settled(served.gateway)
        spent = await spent_by(served, key_id)
        # Room for one more hold on top of today's spend, not two.
        assert (await patch(served, user, key_id, {"limit_milli": spent + HOLD, "limit_period": "day"}))[0] == 200
        count, _, _ = await until_refused(served, secret)
    assert count == 1


@LEASES
async def test_patch_raising_lowering_and_removing_a_limit_takes_effect_on_the_next_request(
    db_url: str, ollama: Any, serve: Any, lease_requests: int
) -> None:
    async with serve(config(ollama, db_url, lease_requests=lease_requests)) as served:
        user = await funded_user(served)
        _, created = await new_key(served, user, limit_milli=HOLD, limit_period="month")
        key_id, secret = created["key"]["id"], created["secret"]
        await until_refused(served, secret)
        status, raised = await patch(served, user, key_id, {"limit_milli": HOLD * 100})
        assert status == 200 and (raised["key"]["limit_milli"], raised["key"]["limit_period"]) == (HOLD * 100, "month")
        assert (await chat(served, secret))[0] == 200
        await until_settled(served.gateway)
        status, lowered = await patch(served, user, key_id, {"limit_milli": 1, "limit_period": "total"})
        assert status == 200 and lowered["key"]["limit_period"] == "total"
        assert (await chat(served, secret))[0] == 402
        status, removed = await patch(served, user, key_id, {"limit_milli": None})
        assert status == 200 and (removed["key"]["limit_milli"], removed["key"]["limit_period"]) == (None, None)
        assert (await chat(served, secret))[0] == 200


async def test_v1_account_shows_the_keys_own_limit_spent_and_what_is_left(db_url: str, ollama: Any, serve: Any) -> None:
    clock = ManualClock()
    async with serve(config(ollama, db_url), clock=clock) as served:
        user = await funded_user(served)
        limit = HOLD * 5
        _, created = await new_key(served, user, limit_milli=limit, limit_period="day")
        key_id, secret = created["key"]["id"], created["secret"]
        _, plain = await new_key(served, user)
        assert (await chat(served, secret))[0] == 200
        await until_settled(served.gateway)
        spent = await spent_by(served, key_id)
        async with served.request("GET", "/v1/account", headers=bearer(secret)) as r:
            shown = (await r.json())["key"]["limit"]
        async with served.request("GET", "/v1/account", headers=bearer(plain["secret"])) as r:
            assert (await r.json())["key"]["limit"] is None
    today = (datetime.fromtimestamp(clock.time(), UTC) + KUWAIT).date()
    midnight = datetime.combine(today + timedelta(days=1), datetime.min.time()) - KUWAIT
    assert shown == {
        "limit_milli": limit,
        "period": "day",
        "spent_milli": spent,
        "held_milli": 0,
        "remaining_milli": limit - spent,
        "period_start": today.isoformat(),
        "resets_at": midnight.isoformat() + "Z",
    }


async def test_an_expired_limited_hold_is_released_from_its_scope_by_the_sweeper(
    db_url: str, ollama: Any, serve: Any
) -> None:
    async with serve(config(ollama, db_url)) as served:
        user = await funded_user(served)
        _, created = await new_key(served, user, limit_milli=HOLD * 2, limit_period="day")
        credits = served.gateway.plugin("credits")
        limit = SpendLimit("key", created["key"]["id"], HOLD * 2, "day")
        scope = scopes.current(limit, now=served.gateway.clock.time(), tz=credits.tz)
        # What a worker that crashed after `reserve` leaves: a hold, counted in its key's scope, nobody settles.
        past = datetime.now(UTC).replace(tzinfo=None, microsecond=0) - timedelta(seconds=1)
        taken = await credits.ledger.hold(
            account_id=user.account_id,
            amount_milli=HOLD,
            request_id="crashed",
            tier="basic",
            expires_at=past,
            scopes=(scope,),
        )
        assert taken is not None
        async with served.gateway.database.connect() as conn:
            assert (await conn.execute(sa.select(spend_scopes.c.reserved_milli))).scalar_one() == HOLD
        assert await credits.ledger.release_expired() == 1
        async with served.gateway.database.connect() as conn:
            row = (await conn.execute(sa.select(spend_scopes))).one()
            assert (await conn.execute(sa.select(scope_holds))).all() == []
    assert (row.reserved_milli, row.spent_milli) == (0, 0)
