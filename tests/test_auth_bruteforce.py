"""Brute force: one answer and one cost for unknown logins and wrong passwords; failures limited per login
name (5) and per IP (20) in a window, with retry-after, shared between workers through Redis."""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from tests.auth_helpers import PASSWORD, auth_config, login, register_user, unique_email

# Argon2id slow enough that the hash, not the database, dominates a login; still quick for a test.
MEASURABLE = {"password_time_cost": 2, "password_memory_kib": 32 * 1024, "password_parallelism": 1}


async def attempt(served: Any, login_name: str, password: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    async with served.request("POST", "/api/auth/login", json={"login": login_name, "password": password}) as resp:
        return resp.status, await resp.json(), dict(resp.headers)


def assert_throttled(status: int, body: dict[str, Any], headers: dict[str, str], window: int) -> None:
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
                json={"current_password": f"guess {i}", "new_password": "n" * 12},
            ) as resp:
                assert resp.status == 422
        async with served.request(
            "POST",
            "/api/me/password",
            headers=user.headers,
            json={"current_password": PASSWORD, "new_password": "n" * 12},
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
