"""Every change an admin makes through /api/admin is in the audit trail, on SQLite and MariaDB: the app's own
route table is read, so a new POST/PATCH/PUT/DELETE under /api/admin without a row in AUDITED fails here.
Each route is called first in ways that must be refused (a plain user, no CSRF token, a body with an
unknown field, a missing target, and the route's own refusals and repeats), which must add no audit row,
then once as it should be, which must add exactly one, read back through `GET /api/admin/audit`: the
admin as actor, the action and target, the reason given, the client's address behind the trusted proxy
(what the access log records), and details without the session's secrets. No call may change or remove a
row written before it (the database refuses to as well: tests/test_audit_append_only.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.support.billing_admin import call
from tests.support.matrix import matrix_config, served_routes
from tests.support.portal import LoggedIn, register_user

CLIENT_IP = "203.0.113.7"  # the client, as the trusted proxy in front of the gateway forwards it
MUTATING = ("POST", "PATCH", "PUT", "DELETE")


@dataclass
class World:
    admin: LoggedIn
    plain: LoggedIn
    victim: LoggedIn
    message_id: int = 0
    order: str = ""


Text = Callable[[World], str]
Body = Callable[[World], dict[str, Any]]


@dataclass(frozen=True)
class Refusal:
    """A call of the route that must change nothing: its path and body, and the status it must get."""

    path: Text
    body: Body
    status: int
    code: str | None = None


@dataclass(frozen=True)
class Audited:
    """How to make the route's change once, and the audit row it must leave."""

    path: Text
    body: Body
    status: int
    action: str
    target: Callable[[World, Any], str]
    reason: str | None
    missing: Text | None = None  # the path with a target that does not exist: 404
    refusals: tuple[Refusal, ...] = ()
    after: Callable[[World, Any], None] | None = None  # what the world learns from the answer
    repeats: tuple[Refusal, ...] = ()  # the same call again: answered, but nothing new


def order_path(verb: str) -> Text:
    return lambda w: f"/api/admin/orders/{w.order}/{verb}"


def keep_order(w: World, answer: Any) -> None:
    w.order = answer["order"]["id"]


CREDITS: Text = lambda w: f"/api/admin/accounts/{w.victim.account_id}/credits"  # noqa: E731
RESEND: Text = lambda w: f"/api/admin/outbox/{w.message_id}/resend"  # noqa: E731

# In the order they run: the order is created, then marked paid, then refunded.
AUDITED: dict[tuple[str, str], Audited] = {
    ("POST", "/api/admin/users/{user_id}/ban"): Audited(
        path=lambda w: f"/api/admin/users/{w.victim.user_id}/ban",
        body=lambda w: {"reason": "spam from this account"},
        status=200,
        action="admin.ban_user",
        target=lambda w, _: f"user:{w.victim.user_id}",
        reason="spam from this account",
        missing=lambda w: "/api/admin/users/999999999/ban",
        refusals=(
            Refusal(
                lambda w: f"/api/admin/users/{w.admin.user_id}/ban", lambda w: {"reason": "x"}, 409, "cannot_ban_self"
            ),
            Refusal(lambda w: f"/api/admin/users/{w.victim.user_id}/ban", lambda w: {}, 422, "reason_required"),
        ),
    ),
    ("POST", "/api/admin/users/{user_id}/unban"): Audited(
        path=lambda w: f"/api/admin/users/{w.victim.user_id}/unban",
        body=lambda w: {"reason": "appealed"},
        status=200,
        action="admin.unban_user",
        target=lambda w, _: f"user:{w.victim.user_id}",
        reason="appealed",
        missing=lambda w: "/api/admin/users/999999999/unban",
    ),
    ("PATCH", "/api/admin/accounts/{account_id:int}"): Audited(
        path=lambda w: f"/api/admin/accounts/{w.victim.account_id}",
        body=lambda w: {"tier": "pro", "plan_expires_at": "2030-01-31T00:00:00Z", "reason": "sales deal #12"},
        status=200,
        action="tiers.set_plan",
        target=lambda w, _: f"account:{w.victim.account_id}",
        reason="sales deal #12",
        missing=lambda w: "/api/admin/accounts/999999999",
        refusals=(
            Refusal(lambda w: f"/api/admin/accounts/{w.victim.account_id}", lambda w: {"tier": "gold"}, 422),
            Refusal(lambda w: f"/api/admin/accounts/{w.victim.account_id}", lambda w: {"reason": "why"}, 422),
            Refusal(
                lambda w: f"/api/admin/accounts/{w.victim.account_id}",
                lambda w: {"tier": "pro", "reason": ""},
                422,
                "reason_required",
            ),
            Refusal(
                lambda w: f"/api/admin/accounts/{w.victim.account_id}",
                lambda w: {"tier": "pro", "reason": "x" * 501},
                422,
                "reason_too_long",
            ),
        ),
    ),
    ("POST", "/api/admin/accounts/{account_id:int}/credits"): Audited(
        path=CREDITS,
        body=lambda w: {"delta_milli": 2500, "reason": "goodwill after the outage"},
        status=201,
        action="credits.adjust",
        target=lambda w, _: f"account:{w.victim.account_id}",
        reason="goodwill after the outage",
        missing=lambda w: "/api/admin/accounts/999999999/credits",
        refusals=(
            Refusal(CREDITS, lambda w: {"delta_milli": -(10**12), "reason": "too much"}, 409, "balance_too_low"),
            Refusal(CREDITS, lambda w: {"delta_milli": 1000}, 422, "reason_required"),
            Refusal(CREDITS, lambda w: {"delta_milli": 0, "reason": "nothing"}, 422),
        ),
    ),
    ("POST", "/api/admin/orders"): Audited(
        path=lambda w: "/api/admin/orders",
        body=lambda w: {"account_id": w.victim.account_id, "product": "pack-5000", "reason": "bank transfer"},
        status=201,
        action="billing.manual_order",
        target=lambda w, answer: f"order:{answer['order']['id']}",
        reason="bank transfer",
        refusals=(
            Refusal(
                lambda w: "/api/admin/orders",
                lambda w: {"account_id": 999999999, "product": "pack-5000", "reason": "x"},
                422,
                "account_id_not_found",
            ),
            Refusal(lambda w: "/api/admin/orders", lambda w: {"account_id": w.victim.account_id, "reason": "x"}, 422),
        ),
        after=keep_order,
    ),
    ("POST", "/api/admin/orders/{reference}/mark-paid"): Audited(
        path=order_path("mark-paid"),
        body=lambda w: {"reference": "TRX-77", "reason": "transfer arrived"},
        status=200,
        action="billing.mark_paid",
        target=lambda w, _: f"order:{w.order}",
        reason="transfer arrived",
        missing=lambda w: "/api/admin/orders/ord_doesnotexist000/mark-paid",
        # Not paid yet: nothing to refund.
        refusals=(
            Refusal(order_path("refund"), lambda w: {"amount_fils": 1, "reason": "x"}, 409, "order_not_refundable"),
        ),
        repeats=(
            Refusal(order_path("mark-paid"), lambda w: {"reference": "TRX-77", "reason": "transfer arrived"}, 200),
        ),
    ),
    ("POST", "/api/admin/orders/{reference}/refund"): Audited(
        path=order_path("refund"),
        body=lambda w: {"amount_fils": 1000, "reason": "customer asked"},
        status=201,
        action="billing.refund",
        target=lambda w, _: f"order:{w.order}",
        reason="customer asked",
        missing=lambda w: "/api/admin/orders/ord_doesnotexist000/refund",
        refusals=(Refusal(order_path("refund"), lambda w: {"amount_fils": 10**9, "reason": "x"}, 422),),
        repeats=(Refusal(order_path("refund"), lambda w: {"amount_fils": 1000, "reason": "customer asked"}, 200),),
    ),
    ("POST", "/api/admin/outbox/{message_id:int}/resend"): Audited(
        path=RESEND,
        body=lambda w: {"reason": "the customer changed phones"},
        status=200,
        action="notify.resend",
        target=lambda w, _: f"outbox:{w.message_id}",
        reason="the customer changed phones",
        missing=lambda w: f"/api/admin/outbox/{2**62}/resend",
        refusals=(Refusal(RESEND, lambda w: {"reason": 5}, 422, "reason_required"),),
    ),
}


def code_of(answer: Any) -> str | None:
    return answer["error"]["code"] if isinstance(answer, dict) and "error" in answer else None


async def trail(served: Any, admin: LoggedIn, query: str = "") -> list[dict[str, Any]]:
    """Every audit row, oldest first, as `GET /api/admin/audit` shows them (paged to the end)."""
    entries: list[dict[str, Any]] = []
    cursor = ""
    while True:
        status, page = await call(served, "GET", f"/api/admin/audit?limit=100{query}{cursor}", admin)
        assert status == 200, page
        entries += page["entries"]
        if page["next_cursor"] is None:
            return entries[::-1]
        cursor = f"&cursor={page['next_cursor']}"


async def as_client(
    served: Any, method: str, path: str, user: LoggedIn, body: Any, *, csrf: bool = True
) -> tuple[int, Any]:
    """A call from CLIENT_IP through the trusted proxy (the test's loopback)."""
    headers = {"X-Forwarded-For": CLIENT_IP}
    if not csrf:
        headers["X-CSRF-Token"] = ""
    return await call(served, method, path, user, body, **headers)


async def refused_calls(served: Any, world: World, method: str, case: Audited) -> None:
    """Every way the route must be refused, each with its status (and code, where it says)."""
    path, body = case.path(world), case.body(world)
    answers = [
        await as_client(served, method, path, world.plain, body),
        await as_client(served, method, path, world.admin, body, csrf=False),
        await as_client(served, method, path, world.admin, {**body, "sneaky": 1}),
    ]
    expected: list[tuple[int, str | None]] = [(403, "admin_required"), (403, "csrf_failed"), (422, None)]
    if case.missing is not None:
        answers.append(await as_client(served, method, case.missing(world), world.admin, body))
        expected.append((404, None))
    for refusal in case.refusals:
        answers.append(await as_client(served, method, refusal.path(world), world.admin, refusal.body(world)))
        expected.append((refusal.status, refusal.code))
    for (status, answer), (want, code) in zip(answers, expected, strict=True):
        assert status == want and (code is None or code_of(answer) == code), (method, path, status, answer)


async def repeat_calls(served: Any, world: World, method: str, case: Audited) -> None:
    for repeat in case.repeats:
        status, answer = await as_client(served, method, repeat.path(world), world.admin, repeat.body(world))
        assert status == repeat.status, (method, repeat.path(world), answer)


def check_row(row: dict[str, Any], world: World, case: Audited, answer: Any, since: datetime) -> None:
    assert row["actor_user_id"] == world.admin.user_id, row
    assert since <= datetime.fromisoformat(row["at"]) <= datetime.now(UTC) + timedelta(seconds=1), row
    assert (row["action"], row["target"]) == (case.action, case.target(world, answer)), row
    assert row["reason"] == case.reason and row["ip"] == CLIENT_IP, row
    assert isinstance(row["details"], dict) and row["details"], row
    shown = str(row["details"]).lower()
    for secret in (world.admin.csrf_token, world.admin.session, world.victim.password):
        assert str(secret).lower() not in shown, row
    assert not any(word in shown for word in ("password", "secret", "csrf", "cookie", "token")), row


async def test_every_mutating_admin_route_writes_exactly_one_audit_row(
    db_url: str, ollama: Any, serve: Any, request: pytest.FixtureRequest
) -> None:
    redis_url = request.getfixturevalue("redis_url") if db_url.startswith("mysql") else None
    config = matrix_config(ollama, db_url, redis_url)
    config["server"]["trusted_proxies"] = ["127.0.0.1/32"]
    async with serve(config) as served:
        mutating = {(m, p) for m, p in served_routes(served) if p.startswith("/api/admin/") and m in MUTATING}
        assert sorted(mutating - set(AUDITED)) == [], "an admin route that changes something has no AUDITED row"
        assert sorted(set(AUDITED) - mutating) == [], "an AUDITED row names a route the app does not serve"
        world = World(
            admin=await register_user(served, admin=True, locale="en"),
            plain=await register_user(served, locale="en"),
            victim=await register_user(served, locale="en"),
        )
        await served.gateway.drain()
        status, outbox = await call(served, "GET", "/api/admin/outbox", world.admin)
        assert status == 200 and outbox["data"], outbox  # the welcomes, queued
        world.message_id = outbox["data"][-1]["id"]
        done: list[dict[str, Any]] = await trail(served, world.admin)
        assert done == []
        for (method, template), case in AUDITED.items():
            await refused_calls(served, world, method, case)
            assert await trail(served, world.admin) == done, f"a refused {method} {template} was audited"
            since = datetime.now(UTC).replace(microsecond=0)
            status, answer = await as_client(served, method, case.path(world), world.admin, case.body(world))
            assert status == case.status, (method, template, answer)
            now = await trail(served, world.admin)
            # Nothing written before was changed or removed, and exactly one row is new.
            assert now[: len(done)] == done and len(now) == len(done) + 1, (method, template, now[len(done) :])
            check_row(now[-1], world, case, answer, since)
            found = await trail(served, world.admin, f"&action={case.action}&target={case.target(world, answer)}")
            assert found[-1] == now[-1]
            if case.after is not None:
                case.after(world, answer)
            await repeat_calls(served, world, method, case)
            assert await trail(served, world.admin) == now, f"a repeated {method} {template} was audited again"
            done = now
    assert [row["action"] for row in done] == [case.action for case in AUDITED.values()]


async def test_a_plan_change_a_credit_adjustment_and_a_resend_say_what_changed(
    db_url: str, ollama: Any, serve: Any
) -> None:
    """Their details; a reason left out of a plan change or a resend is null; and with no trusted proxy
    configured, a client's own X-Forwarded-For is not believed: the row has the peer's address."""
    async with serve(matrix_config(ollama, db_url)) as served:
        admin = await register_user(served, admin=True, locale="en")
        victim = await register_user(served, tier="pro", locale="en")
        path = f"/api/admin/accounts/{victim.account_id}"
        spoofed = {"X-Forwarded-For": "198.51.100.9"}
        assert (await call(served, "PATCH", path, admin, {"tier": "enterprise"}, **spoofed))[0] == 200
        status, row = await call(served, "POST", f"{path}/credits", admin, {"delta_milli": 1500, "reason": "typo fix"})
        assert status == 201
        await served.gateway.drain()
        status, resent = await call(served, "GET", "/api/admin/outbox", admin)
        message = resent["data"][0]
        assert (await call(served, "POST", f"/api/admin/outbox/{message['id']}/resend", admin))[0] == 200
        plan, credits, resend = await trail(served, admin)
    assert {plan["ip"], credits["ip"], resend["ip"]} == {"127.0.0.1"}
    assert (plan["reason"], plan["details"]) == (
        None,
        {"before": {"tier": "pro", "plan_expires_at": None}, "after": {"tier": "enterprise", "plan_expires_at": None}},
    )
    assert credits["details"] == {
        "delta_milli": 1500,
        "balance_after_milli": row["balance_after_milli"],
        "ledger_id": row["id"],
    }
    assert resend["reason"] is None and resend["details"] == {
        "event_name": message["event_name"],
        "event_id": message["event_id"],
        "audience": message["audience"],
        "recipient": message["recipient"],
        "status_before": message["status"],
        "attempts_before": message["attempts"],
    }


async def test_a_retried_credit_adjustment_is_one_ledger_row_and_one_audit_row(
    db_url: str, ollama: Any, serve: Any, request: pytest.FixtureRequest
) -> None:
    """Twenty copies of one adjustment (one Idempotency-Key) at once: one 201, the rest 200, and the trail
    says it once; a refused one (409) beside them leaves nothing."""
    redis_url = request.getfixturevalue("redis_url") if db_url.startswith("mysql") else None
    async with serve(matrix_config(ollama, db_url, redis_url)) as served:
        admin = await register_user(served, admin=True, locale="en")
        victim = await register_user(served, locale="en")
        path = f"/api/admin/accounts/{victim.account_id}/credits"
        body = {"delta_milli": 700, "reason": "double click"}
        copies = [call(served, "POST", path, admin, body, **{"Idempotency-Key": "click-7"}) for _ in range(20)]
        too_much = call(served, "POST", path, admin, {"delta_milli": -(10**9), "reason": "no"})
        answers = await asyncio.gather(*copies, too_much)
        entries = await trail(served, admin)
        shown, ledger = await call(served, "GET", f"/api/admin/accounts/{victim.account_id}/ledger", admin)
    assert sorted(status for status, _ in answers[:-1]) == [200] * 19 + [201]
    assert answers[-1][0] == 409 and shown == 200
    assert {answer["id"] for _, answer in answers[:-1]} == {ledger["data"][0]["id"]} and len(ledger["data"]) == 1
    assert [(e["action"], e["details"]["ledger_id"]) for e in entries] == [("credits.adjust", ledger["data"][0]["id"])]
