"""What a hostile or careless caller sends the credits API (issue 15, finding 10): cursors and limits out of
range or in other digits, a reused Idempotency-Key with another body, account ids that do not exist. Each
answers a JSON error naming what is wrong, never a 500, on SQLite and MariaDB."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.support.inputs import field_codes
from tests.support.portal import register_user
from tests.test_credits_api import call, config

BAD_NUMBERS = [
    "9223372036854775808",  # one past the largest BIGINT
    "9999999999999999999",
    "99999999999999999999999",
    "-1",
    "1.5",
    "1e3",
    "0x10",
    " 5",
    "²",  # str.isdigit() says yes, int() says no
    "١٢",  # Arabic-Indic digits: int() reads them, the API does not
]


async def test_out_of_range_and_malformed_cursors_and_limits_answer_422_naming_the_field(
    db_url: str, ollama: Any, serve: Any
) -> None:
    async with serve(config(ollama, db_url)) as served:
        admin = await register_user(served, admin=True)
        user = await register_user(served)
        ledger = f"/api/admin/accounts/{user.account_id}/ledger"
        for path, headers in (("/api/usage", user.headers), (ledger, admin.headers)):
            for value in BAD_NUMBERS:
                for field in ("cursor", "limit"):
                    status, body = await call(served, "GET", path, params={field: value}, headers=headers)
                    assert status == 422, (path, field, value, status, body)
                    assert list(field_codes(body)) == [field], (path, field, value)
            for field, value in (("limit", "0"), ("limit", "201")):
                status, body = await call(served, "GET", path, params={field: value}, headers=headers)
                assert status == 422 and list(field_codes(body)) == [field]
            # The largest cursor there can be is still a cursor: an empty page.
            status, body = await call(served, "GET", path, params={"cursor": str(2**63 - 1)}, headers=headers)
            assert status == 200 and body["data"] == [] and body["next_cursor"] is None
        status, text = await call(served, "GET", "/api/usage.csv", params={"cursor": "9" * 30}, headers=user.headers)
        assert status == 200 and text.startswith("created_at,")


async def test_an_idempotency_key_reused_with_another_body_answers_409(db_url: str, ollama: Any, serve: Any) -> None:
    async with serve(config(ollama, db_url)) as served:
        admin = await register_user(served, admin=True)
        user = await register_user(served)
        path = f"/api/admin/accounts/{user.account_id}/credits"
        headers = {**admin.headers, "Idempotency-Key": "click-7"}
        status, first = await call(
            served, "POST", path, json={"delta_milli": 5000, "reason": "goodwill"}, headers=headers
        )
        assert status == 201
        status, again = await call(
            served, "POST", path, json={"reason": "goodwill", "delta_milli": 5000}, headers=headers
        )
        assert (status, again) == (200, first)  # the same adjustment, retried: the first result
        for other in ({"delta_milli": 50_000, "reason": "goodwill"}, {"delta_milli": 5000, "reason": "another"}):
            status, body = await call(served, "POST", path, json=other, headers=headers)
            assert status == 409 and body["error"]["code"] == "idempotency_key_reused", body
            assert body["error"]["type"] == "invalid_request_error"
        balance = await served.gateway.plugin("credits").balance(user.account_id)
    assert balance["balance_milli"] == 5000


async def test_a_burst_of_the_same_click_is_one_adjustment(db_url: str, ollama: Any, serve: Any) -> None:
    """Ten copies of one adjustment at once (a double click, a retrying client), then ten with another body
    under the same key: one ledger row, the copies answer with it, the others 409."""
    async with serve(config(ollama, db_url)) as served:
        admin = await register_user(served, admin=True)
        user = await register_user(served)
        path = f"/api/admin/accounts/{user.account_id}/credits"
        headers = {**admin.headers, "Idempotency-Key": "burst-1"}
        body = {"delta_milli": 7000, "reason": "goodwill"}
        same = await asyncio.gather(*(call(served, "POST", path, json=body, headers=headers) for _ in range(10)))
        other = {"delta_milli": 70_000, "reason": "goodwill"}
        changed = await asyncio.gather(*(call(served, "POST", path, json=other, headers=headers) for _ in range(10)))
        balance = await served.gateway.plugin("credits").balance(user.account_id)
    assert sorted(status for status, _ in same) == [200] * 9 + [201]
    assert len({str(answer) for _, answer in same}) == 1
    assert {(status, answer["error"]["code"]) for status, answer in changed} == {(409, "idempotency_key_reused")}
    assert balance["balance_milli"] == 7000


@pytest.mark.parametrize("account", ["999", "9223372036854775807", "99999999999999999999999"])
async def test_admin_routes_answer_404_for_an_account_that_does_not_exist(
    db_url: str, ollama: Any, serve: Any, account: str
) -> None:
    async with serve(config(ollama, db_url)) as served:
        admin = await register_user(served, admin=True)
        base = f"/api/admin/accounts/{account}"
        answers = [
            await call(served, "GET", f"{base}/ledger", headers=admin.headers),
            await call(
                served, "POST", f"{base}/credits", json={"delta_milli": 5, "reason": "r"}, headers=admin.headers
            ),
        ]
    for status, body in answers:
        assert status == 404 and body["error"]["code"] == "account_not_found", body
