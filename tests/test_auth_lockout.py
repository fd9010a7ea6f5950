"""Targeted lockout and what the throttle's answers reveal.

The per-name login window is keyed by the login as typed (normalised) and split by client address: from
one IP, 5 wrong passwords for someone's email lock out only that IP, never the user from their own
address, and never change the answers for the user's phone (which used to answer 429 while any other
phone answered 401, telling an attacker which phone belongs to the email). Across all addresses a login
still meets a larger limit (50), so a distributed guesser is stopped too. Clients are told apart by
X-Forwarded-For from a trusted proxy, as behind the production nginx.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.portal import PASSWORD, auth_config, register_user, unique_email, unique_phone
from tests.test_auth_bruteforce import assert_throttled

BEHIND_PROXY = {"trusted_proxies": ["127.0.0.0/8"]}
ATTACKER = "203.0.113.66"
VICTIM = "198.51.100.7"


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> str | None:
    """Where the windows live: in process (no Redis configured), or in Redis."""
    return None if request.param == "memory" else str(request.getfixturevalue("redis_url"))


async def attempt(served: Any, ip: str, login: str, password: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    body = {"login": login, "password": password}
    async with served.request("POST", "/api/auth/login", json=body, headers={"X-Forwarded-For": ip}) as resp:
        return resp.status, await resp.json(), dict(resp.headers)


async def test_one_ip_locks_out_only_itself_and_learns_nothing_about_the_phone(
    ollama: Any, db_url: str, store: str | None, serve: Any
) -> None:
    async with serve(auth_config(ollama, db_url, redis_url=store, server=BEHIND_PROXY)) as served:
        victim = await register_user(served)
        for i in range(5):
            assert (await attempt(served, ATTACKER, victim.email, f"guess {i}"))[0] == 401
        # The attacker's own further guesses for that email are refused...
        assert_throttled(*(await attempt(served, ATTACKER, victim.email, PASSWORD)), window=900)
        # ...but the victim, from their own address, still logs in with their password.
        assert (await attempt(served, VICTIM, victim.email, PASSWORD))[0] == 200
        # The victim's phone answers exactly as any other phone does: no link from the email to it.
        mine = await attempt(served, ATTACKER, victim.phone, "x")
        other = await attempt(served, ATTACKER, unique_phone(), "x")
        assert (mine[0], mine[1]) == (other[0], other[1]) == (401, mine[1]), (mine, other)
        assert mine[1]["error"]["code"] == "invalid_credentials"
        # The attacker still cannot guess on: a correct password from the attacker's address is refused too.
        assert_throttled(*(await attempt(served, ATTACKER, victim.email, PASSWORD)), window=900)


async def test_many_ips_are_stopped_at_the_all_ips_limit_and_the_phone_is_untouched(
    ollama: Any, db_url: str, store: str | None, serve: Any
) -> None:
    async with serve(auth_config(ollama, db_url, redis_url=store, server=BEHIND_PROXY)) as served:
        victim = await register_user(served)
        ghost = unique_email()
        for name in (victim.email, ghost):
            # Ten addresses, five guesses each: every one is evaluated (each address is under its 5)...
            statuses = [
                (await attempt(served, f"192.0.2.{n}", name, f"guess {n}.{i}"))[0] for n in range(10) for i in range(5)
            ]
            assert statuses == [401] * 50, statuses
            # ...and then the login is closed to every address, the 51st one too; an unknown login alike.
            assert_throttled(*(await attempt(served, "192.0.2.200", name, PASSWORD)), window=900)
        # The documented price: while it lasts, the victim's password by email is refused from anywhere,
        assert_throttled(*(await attempt(served, VICTIM, victim.email, PASSWORD)), window=900)
        # but the phone is another login name: untouched, and the victim logs in with it.
        assert (await attempt(served, VICTIM, victim.phone, PASSWORD))[0] == 200


async def test_a_correct_password_keeps_the_failures_counted_across_addresses(
    ollama: Any, db_url: str, serve: Any
) -> None:
    # A login by the user must not hand a distributed guesser a fresh allowance.
    config = auth_config(ollama, db_url, server=BEHIND_PROXY, login_attempts_per_name_all_ips=6)
    async with serve(config) as served:
        user = await register_user(served)
        for i in range(4):
            assert (await attempt(served, ATTACKER, user.email, f"guess {i}"))[0] == 401
        assert (await attempt(served, VICTIM, user.email, "a typo"))[0] == 401
        assert (await attempt(served, VICTIM, user.email, PASSWORD))[0] == 200
        # The success itself does not count, the five failures do: one place is left for all addresses.
        assert (await attempt(served, "192.0.2.9", user.email, "guess 5"))[0] == 401
        assert_throttled(*(await attempt(served, "192.0.2.10", user.email, "guess 6")), window=900)
