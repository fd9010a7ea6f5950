"""Brute force: one answer and one cost for unknown logins and wrong passwords; attempts limited per login
name (as typed, normalised) from one IP (5), per login name from all IPs (50, tests/test_auth_lockout.py)
and per IP (20) in a window, counted before the password is verified so a burst is limited too, with
retry-after, shared between workers through Redis."""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import pytest

from edge.errors import TooManyRequests
from plugins.auth_keys.throttle import Throttle, ip_bucket
from tests.support.inputs import field_codes
from tests.support.portal import PASSWORD, auth_config, guess_burst, login, register_user, unique_email

# Argon2id slow enough that the hash, not the database, dominates a login; still quick for a test.
NEW_PASSWORD = "a new passphrase, 2026"
MEASURABLE = {"password_time_cost": 2, "password_memory_kib": 32 * 1024, "password_parallelism": 1}


async def attempt(served: Any, login_name: str, password: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    async with served.request("POST", "/api/auth/login", json={"login": login_name, "password": password}) as resp:
        return resp.status, await resp.json(), dict(resp.headers)


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> str | None:
    """Where the windows live: in process (no Redis configured), or in Redis."""
    return None if request.param == "memory" else str(request.getfixturevalue("redis_url"))


def assert_throttled(status: int, body: dict[str, Any], headers: Any, window: int) -> None:
    assert status == 429, body
    assert body["error"]["type"] == "rate_limit_error" and body["error"]["code"] == "too_many_attempts"
    assert 1 <= int(headers["Retry-After"]) <= window


async def test_unknown_login_and_wrong_password_get_the_same_answer_in_the_same_time(
    ollama: Any, db_url: str, serve: Any
) -> None:
    config = auth_config(ollama, db_url, login_failures_per_name=100, login_failures_per_ip=100, **MEASURABLE)
    async with serve(config) as served:
        user = await register_user(served)
        unknown_times, wrong_times, bodies = [], [], set()
        for i in range(7):
            for name, times in ((f"nobody-{i}@example.com", unknown_times), (user.email, wrong_times)):
                started = time.perf_counter()
                status, body, _ = await attempt(served, name, "not the password")
                times.append(time.perf_counter() - started)
                assert status == 401
                bodies.add(repr(body))
        assert len(bodies) == 1
        assert "invalid_credentials" in bodies.pop()
        # Without the dummy hash an unknown login would answer in a fraction of the time.
        ratio = statistics.median(unknown_times) / statistics.median(wrong_times)
        assert 0.5 < ratio < 2.0, (unknown_times, wrong_times)


async def test_five_failures_for_one_login_name_then_429(ollama: Any, db_url: str, serve: Any) -> None:
    async with serve(auth_config(ollama, db_url)) as served:
        victim = await register_user(served)
        bystander = await register_user(served)
        for i in range(5):
            # Case does not make a new login name.
            name = victim.email.upper() if i % 2 else victim.email
            assert (await attempt(served, name, f"guess {i}"))[0] == 401
        # Even the right password is refused now, so guessing cannot go on.
        assert_throttled(*(await attempt(served, victim.email, PASSWORD)), window=900)
        assert (await attempt(served, bystander.email, PASSWORD))[0] == 200


async def test_unknown_login_names_are_throttled_like_real_ones(ollama: Any, db_url: str, serve: Any) -> None:
    async with serve(auth_config(ollama, db_url)) as served:
        ghost = unique_email()
        for i in range(5):
            assert (await attempt(served, ghost, f"guess {i}"))[0] == 401
        assert_throttled(*(await attempt(served, ghost, PASSWORD)), window=900)


async def test_twenty_failures_from_one_ip_then_429(ollama: Any, db_url: str, serve: Any) -> None:
    async with serve(auth_config(ollama, db_url)) as served:
        user = await register_user(served)
        for i in range(20):
            assert (await attempt(served, f"spray-{i}@example.com", "password1"))[0] == 401
        assert_throttled(*(await attempt(served, user.email, PASSWORD)), window=900)


async def test_a_success_resets_the_name_and_the_window_passes(ollama: Any, db_url: str, serve: Any) -> None:
    async with serve(auth_config(ollama, db_url, login_window_seconds=2)) as served:
        user = await register_user(served)
        for _ in range(4):
            assert (await attempt(served, user.email, "wrong password"))[0] == 401
        assert (await attempt(served, user.email, PASSWORD))[0] == 200
        for _ in range(5):
            assert (await attempt(served, user.email, "wrong password"))[0] == 401
        status, body, headers = await attempt(served, user.email, PASSWORD)
        assert_throttled(status, body, headers, window=2)
        await asyncio.sleep(int(headers["Retry-After"]) + 0.2)
        assert (await attempt(served, user.email, PASSWORD))[0] == 200


async def test_guessing_through_password_change_counts_too(ollama: Any, db_url: str, serve: Any) -> None:
    async with serve(auth_config(ollama, db_url)) as served:
        user = await register_user(served)
        for i in range(5):
            async with served.request(
                "POST",
                "/api/me/password",
                headers=user.headers,
                json={"current_password": f"guess {i}", "new_password": NEW_PASSWORD},
            ) as resp:
                assert resp.status == 422
                assert field_codes(await resp.json()) == {"current_password": "password_incorrect"}
        async with served.request(
            "POST",
            "/api/me/password",
            headers=user.headers,
            json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
        ) as resp:
            assert resp.status == 429
        assert (await login(served, login=user.email))[0] == 429


async def test_failures_are_counted_across_workers_through_redis(
    ollama: Any, db_url: str, redis_url: str, serve: Any
) -> None:
    config = auth_config(ollama, db_url, redis_url=redis_url)
    async with serve(config) as first, serve(config) as second:
        user = await register_user(first)
        for served in (first, second, first, second, first):
            assert (await attempt(served, user.email, "wrong password"))[0] == 401
        assert_throttled(*(await attempt(second, user.email, PASSWORD)), window=900)
        assert_throttled(*(await attempt(first, user.email, PASSWORD)), window=900)


async def test_thirty_concurrent_guesses_for_one_user_are_five_evaluated(
    ollama: Any, db_url: str, store: str | None, serve: Any
) -> None:
    # Checked before the verify and counted after it, all 30 used to be evaluated, and a right one among
    # them logged in.
    async with serve(auth_config(ollama, db_url, redis_url=store, **MEASURABLE)) as served:
        user = await register_user(served)
        guesses = [(user.email, f"guess number {i}") for i in range(30)]
        statuses, right = await guess_burst(served.http, served.url, guesses=guesses, then=(user.email, PASSWORD))
        assert (statuses.count(401), statuses.count(429)) == (5, 25), statuses
        assert_throttled(*right, window=900)
        # The phone is another login name, whose answers never depend on what was done to the email.
        assert (await attempt(served, user.phone, PASSWORD))[0] == 200


async def test_thirty_concurrent_guesses_from_one_ip_are_twenty_evaluated(
    ollama: Any, db_url: str, store: str | None, serve: Any
) -> None:
    async with serve(auth_config(ollama, db_url, redis_url=store, **MEASURABLE)) as served:
        user = await register_user(served)
        guesses = [(f"spray-{i}@example.com", "Summer2026!") for i in range(30)]
        statuses, right = await guess_burst(served.http, served.url, guesses=guesses, then=(user.email, PASSWORD))
        assert (statuses.count(401), statuses.count(429)) == (20, 10), statuses
        assert_throttled(*right, window=900)


async def test_a_right_password_gives_back_its_ip_place(ollama: Any, db_url: str, serve: Any) -> None:
    # Attempts are counted before the verify; a correct one must not use up an office's shared IP.
    async with serve(auth_config(ollama, db_url, login_failures_per_ip=3)) as served:
        user = await register_user(served)
        for _ in range(5):
            assert (await attempt(served, user.email, PASSWORD))[0] == 200
        for i in range(3):
            assert (await attempt(served, f"nobody-{i}@example.com", "a wrong one"))[0] == 401
        assert_throttled(*(await attempt(served, user.email, PASSWORD)), window=900)


async def test_accent_case_and_phone_spellings_share_their_allowance_and_one_account(
    ollama: Any, db_url: str, serve: Any
) -> None:
    async with serve(auth_config(ollama, db_url)) as served:
        bob = await register_user(served, email="bob@example.com")
        # Spellings MariaDB's accent-insensitive collations took for bob's: none of them is bob, with any
        # password, on either database.
        for variant in ("BÓB@EXAMPLE.COM", "bøb@example.com", "bob@exámple.com"):
            status, body, _ = await attempt(served, variant, PASSWORD)
            assert status == 401, (variant, body)
        for i in range(5):
            assert (await attempt(served, bob.email, f"guess {i}"))[0] == 401
        # Bob is locked; an accented spelling is another (unknown) name and still cannot log in as bob,
        status, body, _ = await attempt(served, "BÓB@EXAMPLE.COM", PASSWORD)
        assert status == 401, body
        # and every spelling of bob's email (case, full-width letters) is locked with it.
        for same in ("BOB@Example.COM", "ｂｏｂ@example.com"):
            assert_throttled(*(await attempt(served, same, PASSWORD)), window=900)
        # His phone is one login name in every spelling, with an allowance of its own.
        local = bob.phone.removeprefix("+965")
        arabic = local.translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩"))
        spellings = (bob.phone, local, f"00965 {local[:4]} {local[4:]}", f"+965 0{local}", arabic)
        for i, same in enumerate(spellings):
            assert (await attempt(served, same, f"guess {i}"))[0] == 401
        for same in spellings:
            assert_throttled(*(await attempt(served, same, PASSWORD)), window=900)
        users = served.gateway.plugin("auth_keys").users
        # Below the normalisation, the lookup itself matches only the exact stored form.
        for raw in ("BOB@EXAMPLE.COM", "bób@example.com", "bob@example.com "):
            assert await users.credentials(raw) is None, raw
        assert (await users.credentials("bob@example.com")).id == bob.user_id


def test_an_ipv6_client_counts_as_its_64_block() -> None:
    # One line gets a /64: rotating through its addresses must not give a fresh per-IP allowance.
    assert ip_bucket("2001:db8:1:2::1") == ip_bucket("2001:db8:1:2:ffff:ffff:ffff:fffe") == "2001:db8:1:2::/64"
    assert ip_bucket("2001:db8:1:3::1") != ip_bucket("2001:db8:1:2::1")
    assert ip_bucket("::ffff:192.0.2.7") == ip_bucket("192.0.2.7") == "192.0.2.7"
    assert ip_bucket("192.0.2.8") != ip_bucket("192.0.2.7")
    assert ip_bucket("") == ""


async def test_in_process_windows_move_with_the_clock_and_refusals_take_no_place() -> None:
    now = [1000.0]
    limits, message = {"name": 2, "ip": 3}, "{seconds}"
    throttle = Throttle(prefix="t", limits=limits, window_seconds=60, redis=None, message=message, clock=lambda: now[0])
    await throttle.take(name="a", ip="1")
    now[0] += 10
    second = await throttle.take(name="a", ip="1")
    for _ in range(3):
        # Full for `a` until its first attempt leaves the window; refused without using the IP's last place.
        with pytest.raises(TooManyRequests) as refused:
            await throttle.take(name="a", ip="1")
        assert refused.value.headers == {"retry-after": "50"}
    await throttle.take(name="b", ip="1")
    with pytest.raises(TooManyRequests):
        await throttle.take(name="c", ip="1")
    # A place given back is free at once; a forgotten name starts afresh.
    await throttle.give_back(second, kinds=("ip",))
    await throttle.take(name="c", ip="1")
    await throttle.forget(second, kind="name")
    await throttle.take(name="a", ip="2")
    await throttle.take(name="a", ip="2")
    with pytest.raises(TooManyRequests):
        await throttle.take(name="a", ip="2")
    now[0] += 60
    await throttle.take(name="a", ip="2")
