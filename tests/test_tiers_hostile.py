"""`PATCH /api/admin/accounts/{id}` under hostile input: every bad value is a 422 naming the field, a missing
or impossible account a 404, never a 500; and nothing is written."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import base_config
from tests.support.inputs import field_codes
from tests.support.portal import auth_plugin_entry, register_user
from tests.test_tiers_admin import patch, plan_row


@pytest.fixture
def cfg(ollama: Any, db_url: str) -> dict[str, Any]:
    return base_config(ollama_url=ollama.url, database_url=db_url, plugins=[auth_plugin_entry(), {"name": "tiers"}])


BAD_EXPIRIES: list[Any] = [
    "9999-12-31T23:59:59-23:59",  # past the year 9999 once in UTC
    "9999-12-31T23:59:59-00:01",
    "0001-01-01T00:00:00+23:59",  # before the year 1 once in UTC
    "0001-01-01T00:00:00",  # no database or Unix clock means this
    "0999-12-31",
    "1969-12-31T23:59:59Z",
    "1970-01-01T02:59:59+03:00",
    "10000-01-01",
    "1700000000",
    1700000000,
    1e308,
    True,
    ["2030-01-01"],
    {"at": "2030-01-01"},
    "",
    "2030-01-01\x00",
]
BAD_TIERS: list[Any] = [5, None, ["pro"], {"pro": 1}, "PRO", "pro ", "pro\x00", "__class__", "x" * 10_000]


async def test_hostile_plan_values_are_422s_naming_the_field(serve: Any, cfg: dict[str, Any]) -> None:
    async with serve(cfg) as gw:
        admin = await register_user(gw, admin=True)
        target = (await register_user(gw)).account_id
        expiries = [await patch(gw, target, {"plan_expires_at": value}, admin.headers) for value in BAD_EXPIRIES]
        tiers = [await patch(gw, target, {"tier": value}, admin.headers) for value in BAD_TIERS]
        both = await patch(gw, target, {"tier": "gold", "plan_expires_at": "9999-12-31T23:59:59-23:59"}, admin.headers)
        row = await plan_row(gw, target)
    for value, (status, body) in zip(BAD_EXPIRIES, expiries, strict=True):
        assert (status, body["error"]["param"], field_codes(body)) == (
            422,
            "plan_expires_at",
            {"plan_expires_at": "plan_expires_at_invalid"},
        ), value
    for value, (status, body) in zip(BAD_TIERS, tiers, strict=True):
        assert (status, field_codes(body)) == (422, {"tier": "tier_invalid"}), value
    assert both[0] == 422
    assert field_codes(both[1]) == {"tier": "tier_invalid", "plan_expires_at": "plan_expires_at_invalid"}
    assert row == ("basic", None)


async def test_the_ends_of_the_accepted_range_are_kept_exactly(serve: Any, cfg: dict[str, Any]) -> None:
    async with serve(cfg) as gw:
        admin = await register_user(gw, admin=True)
        target = (await register_user(gw)).account_id
        answers = [
            (await patch(gw, target, {"plan_expires_at": value}, admin.headers))[1]["plan_expires_at"]
            for value in ("1970-01-01T03:00:00+03:00", "9999-12-31T20:59:59-03:00", "9999-12-31T23:59:59")
        ]
        _, last = await plan_row(gw, target)
    assert answers == ["1970-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "9999-12-31T23:59:59Z"]
    assert last is not None and last.isoformat() == "9999-12-31T23:59:59"


async def test_a_missing_or_impossible_account_is_404(serve: Any, cfg: dict[str, Any]) -> None:
    async with serve(cfg) as gw:
        admin = await register_user(gw, admin=True)
        results = {
            account_id: await patch(gw, account_id, {"tier": "pro"}, admin.headers)
            for account_id in (0, 999_999, 2**63 - 1, 2**63, 10**30, int("9" * 2000))
        }
    codes = {(status, body["error"]["code"]) for status, body in results.values()}
    assert codes == {(404, "account_not_found")}
