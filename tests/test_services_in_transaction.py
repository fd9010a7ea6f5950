"""A service call given the caller's `conn` is part of the caller's transaction: a credits grant and a plan
change commit with it, and roll back with it (billing credits a paid order this way)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from edge.services import ACCOUNTS, CREDITS
from tests.support.portal import auth_config, register_user


async def test_a_grant_and_a_plan_change_commit_and_roll_back_with_the_callers_transaction(
    serve: Any, ollama: Any, db_url: str
) -> None:
    config = auth_config(ollama, db_url)
    config["plugins"].append({"name": "credits"})
    async with serve(config) as served:
        gateway = served.gateway
        account_id = (await register_user(served)).account_id
        expiry = datetime.now(UTC).replace(tzinfo=None, microsecond=0) + timedelta(days=30)

        async def grant_and_upgrade(conn: Any) -> None:
            await gateway.service(CREDITS).grant(
                account_id=account_id, amount_milli=7000, kind="topup", idempotency_key="order-1", conn=conn
            )
            await gateway.service(ACCOUNTS).set_plan(
                account_id=account_id, tier="pro", plan_expires_at=expiry, conn=conn
            )

        with pytest.raises(RuntimeError):
            async with gateway.database.begin() as conn:
                await grant_and_upgrade(conn)
                raise RuntimeError("the caller's own write failed")
        assert (await gateway.service(CREDITS).balance(account_id)).balance_milli == 0
        account = await gateway.service(ACCOUNTS).account(account_id)
        assert account is not None and (account.tier, account.plan_expires_at) == ("basic", None)

        async with gateway.database.begin() as conn:
            await grant_and_upgrade(conn)
        assert (await gateway.service(CREDITS).balance(account_id)).balance_milli == 7000
        account = await gateway.service(ACCOUNTS).account(account_id)
        assert account is not None and (account.tier, account.plan_expires_at) == ("pro", expiry)
