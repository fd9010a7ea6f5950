"""Typed services between plugins (edge/services.py): the core's guards when no plugin logs users in, the
accounts and credits services as their owners provide them, and identity facts on the principal."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import pytest

from edge import config as config_module
from edge.context import Principal, RequestContext
from edge.gateway import Gateway
from edge.hookspecs import hookimpl
from edge.services import (
    ACCOUNTS,
    CREDITS,
    GUARDS,
    KEEP,
    Account,
    Balance,
    BalanceTooLow,
    MissingService,
    MonthUsage,
    NoGuards,
)
from edge.settings import ConfigError
from tests.conftest import base_config
from tests.support.auth import TokenAuth, bearer
from tests.support.credits import credits_config
from tests.support.portal import auth_plugin_entry, create_key, register_user

# Every /api route of tiers, credits and failover that needs a logged-in user or an admin.
GUARDED = [
    ("PATCH", "/api/admin/accounts/1", {"tier": "pro"}),
    ("POST", "/api/admin/accounts/1/credits", {"delta_milli": 5000, "reason": "goodwill"}),
    ("GET", "/api/admin/accounts/1/ledger", None),
    ("GET", "/api/admin/cloud-budget", None),
    ("GET", "/api/admin/upstreams", None),
    ("GET", "/api/credits", None),
    ("GET", "/api/usage", None),
    ("GET", "/api/usage.csv", None),
]
NOT_LOGGED_IN = {
    "error": {
        "message": "Log in to continue.",
        "type": "authentication_error",
        "param": None,
        "code": "not_authenticated",
    }
}


def three_plugins(ollama: Any, cloud: Any, db_url: str, *, auth: bool) -> dict[str, Any]:
    plugins = [{"name": "tiers"}, {"name": "credits"}, {"name": "failover"}]
    return base_config(
        ollama_url=ollama.url,
        cloud_url=cloud.url,
        database_url=db_url,
        plugins=[auth_plugin_entry(), *plugins] if auth else plugins,
    )


async def answers(served: Any, headers: dict[str, str] | None = None) -> list[tuple[int, Any]]:
    found = []
    for method, path, body in GUARDED:
        async with served.request(method, path, json=body, headers=headers or {}) as resp:
            found.append((resp.status, await resp.json()))
    return found


async def test_without_auth_keys_every_guarded_route_answers_401_as_it_does_without_a_session(
    serve: Any, ollama: Any, cloud: Any, db_url: str
) -> None:
    """Before the core's guards: tiers had no such route (404), credits answered 500, failover 403."""
    async with serve(three_plugins(ollama, cloud, db_url, auth=True)) as served:
        with_auth = await answers(served)
    async with serve(three_plugins(ollama, cloud, db_url, auth=False), plugins=[TokenAuth()]) as served:
        without_auth = await answers(served)
        # An API key is no login: the admin views stay closed to a /v1 caller, whatever it claims.
        with_key = await answers(served, bearer(1, "enterprise", admin=True))
    assert with_auth == [(401, NOT_LOGGED_IN)] * len(GUARDED)
    assert without_auth == with_auth
    assert with_key == with_auth


async def test_the_accounts_service_looks_up_and_sets_a_plan(serve: Any, ollama: Any, db_url: str) -> None:
    config = base_config(ollama_url=ollama.url, database_url=db_url, plugins=[auth_plugin_entry()])
    async with serve(config) as served:
        user = await register_user(served, locale="en")
        accounts = served.gateway.service(ACCOUNTS)
        assert await accounts.account(user.account_id) == Account(
            id=user.account_id,
            tier="basic",
            plan_expires_at=None,
            owner_user_id=user.user_id,
            locale="en",
            phone=user.phone,
        )
        for missing in (user.account_id + 1000, 0, -1, 2**63, 10**30):
            assert await accounts.account(missing) is None
            assert await accounts.set_plan(account_id=missing, tier="pro") is None

        secret = await create_key(served, user)
        async with served.request("GET", "/v1/account", headers={"Authorization": f"Bearer {secret}"}) as resp:
            assert (await resp.json())["tier"] == "basic"  # now cached
        until = datetime(2031, 6, 30, 12, 0, 0)
        changed = await accounts.set_plan(account_id=user.account_id, tier="pro", plan_expires_at=until)
        assert changed is not None and (changed.tier, changed.plan_expires_at) == ("pro", until)
        # The cached key follows at once: set_plan invalidates it.
        async with served.request("GET", "/v1/account", headers={"Authorization": f"Bearer {secret}"}) as resp:
            body = await resp.json()
        assert (body["tier"], body["plan_expires_at"]) == ("pro", "2031-06-30T12:00:00Z")

        # KEEP leaves a value as it is; the same values again (no row changed on MariaDB) is still the account.
        kept = await accounts.set_plan(account_id=user.account_id, tier="enterprise")
        assert kept is not None and (kept.tier, kept.plan_expires_at) == ("enterprise", until)
        cleared = await accounts.set_plan(account_id=user.account_id, tier=KEEP, plan_expires_at=None)
        assert cleared is not None and (cleared.tier, cleared.plan_expires_at) == ("enterprise", None)
        assert await accounts.set_plan(account_id=user.account_id, tier="enterprise") == cleared


async def test_the_credits_service_grants_once_per_key_with_typed_results(serve: Any, ollama: Any, db_url: str) -> None:
    async with serve(credits_config(ollama_url=ollama.url, database_url=db_url)) as served:
        credits = served.gateway.service(CREDITS)
        first = await credits.grant(
            account_id=5, amount_milli=7000, kind="topup", idempotency_key="order-1", reason="pack", actor="billing"
        )
        assert (first.account_id, first.kind, first.amount_milli, first.balance_after_milli) == (5, "topup", 7000, 7000)
        assert (first.reference, first.actor, first.reason, first.created) == ("order-1", "billing", "pack", True)
        again = await credits.grant(account_id=5, amount_milli=7000, kind="topup", idempotency_key="order-1")
        assert again.created is False and again.id == first.id
        assert await credits.balance(5) == Balance(
            account_id=5, balance_milli=7000, reserved_milli=0, available_milli=7000
        )
        with pytest.raises(BalanceTooLow) as refused:
            await credits.grant(account_id=5, amount_milli=-8000, kind="adjustment", idempotency_key="a", reason="x")
        assert refused.value.available_milli == 7000
        usage = await credits.month_usage(5)
        assert isinstance(usage, MonthUsage) and usage.since.day == 1 and isinstance(usage.since, date)
        assert (usage.requests, usage.cost_milli) == (0, 0)
        assert await credits.balance(6) == Balance(account_id=6, balance_milli=0, reserved_milli=0, available_milli=0)


async def test_services_not_provided(serve: Any, ollama: Any, sqlite_url: str) -> None:
    async with serve(base_config(ollama_url=ollama.url, database_url=sqlite_url)) as served:
        gateway: Gateway = served.gateway
        assert gateway.maybe(CREDITS) is None and gateway.maybe(ACCOUNTS) is None
        with pytest.raises(MissingService, match="'credits'"):
            gateway.service(CREDITS)
        assert isinstance(gateway.service(GUARDS), NoGuards)


class SecondAccounts:
    """Provides accounts next to auth_keys: which of two would answer is not for the plugins' order to say."""

    name = "second_accounts"

    @hookimpl
    async def resayil_startup(self, gateway: Gateway) -> None:
        gateway.provide(ACCOUNTS, self)  # type: ignore[arg-type]  # never called: startup stops first


async def test_two_providers_of_one_service_stop_startup(ollama: Any, sqlite_url: str) -> None:
    config = base_config(ollama_url=ollama.url, database_url=sqlite_url, plugins=[auth_plugin_entry()])
    gateway = Gateway(config_module.parse(config, env={}), plugins=[SecondAccounts()])
    with pytest.raises(ConfigError, match="two plugins provide the 'accounts' service"):
        await gateway.start(run_jobs=False)
    assert not gateway.started


# ---- identity facts on the principal --------------------------------------------------------------------------


class TeamMembership:
    """A fact the teams plugin will add; here, a test's own type."""

    __slots__ = ("role", "team_id")

    def __init__(self, team_id: int, role: str) -> None:
        self.team_id = team_id
        self.role = role


class Teams:
    """Adds the caller's team in authorize; a later hook (reserve) reads it back into a response header."""

    name = "test_teams"

    @hookimpl
    async def resayil_authorize(self, ctx: RequestContext) -> None:
        assert ctx.principal is not None
        if ctx.principal.account_id == 7:
            ctx.principal = ctx.principal.with_fact(TeamMembership(team_id=70, role="owner"))

    @hookimpl
    async def resayil_reserve(self, ctx: RequestContext) -> None:
        assert ctx.principal is not None
        team = ctx.principal.fact(TeamMembership)
        ctx.response_headers["x-test-team"] = "none" if team is None else f"{team.team_id}/{team.role}"


async def test_a_plugin_adds_an_identity_fact_in_authorize_that_a_later_hook_reads(
    serve: Any, ollama: Any, sqlite_url: str
) -> None:
    chat = {"model": "llama3.2:3b", "messages": [{"role": "user", "content": "hi"}]}
    async with serve(base_config(ollama_url=ollama.url, database_url=sqlite_url), plugins=[TokenAuth(), Teams()]) as s:
        for account, expected in ((7, "70/owner"), (8, "none"), (7, "70/owner")):
            async with s.request("POST", "/v1/chat/completions", json=chat, headers=bearer(account)) as resp:
                assert resp.status == 200
                assert resp.headers["x-test-team"] == expected


def test_facts_are_kept_by_their_exact_type_and_never_change_the_principal_they_came_from() -> None:
    bare = Principal(account_id=1)
    assert bare.facts == () and bare.fact(TeamMembership) is None
    member = bare.with_fact(TeamMembership(team_id=1, role="member"))
    moved = member.with_fact(TeamMembership(team_id=2, role="owner")).with_fact("a str fact")
    kept = member.fact(TeamMembership)
    assert bare.facts == () and kept is not None and kept.team_id == 1
    team = moved.fact(TeamMembership)
    assert team is not None and (team.team_id, team.role) == (2, "owner")
    assert moved.fact(str) == "a str fact" and moved.fact(object) is None and len(moved.facts) == 2
