"""One real phone, one normal form: a trunk zero (or a run of zeros) typed after any country code is not a
new number, so one subscriber registers once and meets the per-phone limits once, and logs in by any form."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command

from edge import migrate
from edge.db import sync_url
from plugins.auth_keys.phones import normalize_phone
from plugins.auth_keys.tables import users
from tests.conftest import all_version_locations
from tests.support.inputs import field_codes
from tests.support.portal import PASSWORD, auth_config, login, register_user, unique_email

SAUDI = ("+966 55 123 4567", "+966 055 123 4567", "+966 0055 123 4567", "00966 055 123 4567", "٠٠٩٦٦٠٥٥١٢٣٤٥٦٧")


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> str | None:
    return None if request.param == "memory" else str(request.getfixturevalue("redis_url"))


@pytest.mark.parametrize(
    ("forms", "e164"),
    [
        (SAUDI, "+966551234567"),
        (("+971 50 123 4567", "+971 050 123 4567", "+971 00 50 123 4567"), "+971501234567"),
        (("+44 20 7946 0018", "+44 020 7946 0018", "+44 (0)20 7946 0018"), "+442079460018"),
        (("+965 9765 4321", "+965 0 9765 4321", "9765 4321", "0096597654321"), "+96597654321"),
        # Where the zero is part of the number, it stays.
        (("+39 06 1234 5678",), "+390612345678"),
        (("+225 07 12 34 56 78",), "+2250712345678"),
    ],
)
def test_every_form_of_one_number_is_one_e164(forms: tuple[str, ...], e164: str) -> None:
    assert {form: normalize_phone(form) for form in forms} == dict.fromkeys(forms, e164)


@pytest.mark.parametrize(
    "raw",
    [
        "+96501234567",  # a Kuwaiti number of 7 digits once the zero is gone
        "+966 55 123 4567 8901 23",  # 16 digits: past E.164's 15
        "+999 1234 5678",  # no such country code
        "+966 5",
        "+966 55 123 4567 ext 9",
        "+",
    ],
)
def test_what_is_not_a_phone_number(raw: str) -> None:
    assert normalize_phone(raw) is None


def form(phone: str) -> dict[str, str]:
    return {"name": "Sara", "email": unique_email(), "phone": phone, "password": PASSWORD}


async def register(served: Any, body: dict[str, str]) -> tuple[int, dict[str, Any]]:
    async with served.request("POST", "/api/auth/register", json=body) as resp:
        return resp.status, await resp.json()


async def test_one_saudi_phone_registers_once_and_logs_in_by_every_form(ollama: Any, db_url: str, serve: Any) -> None:
    async with serve(auth_config(ollama, db_url)) as served:
        user = await register_user(served, phone=SAUDI[1])
        assert user.phone == "+966551234567"
        for spelling in SAUDI:
            status, data = await register(served, form(spelling))
            assert (status, field_codes(data)) == (422, {"phone": "phone_taken"}), spelling
        for spelling in SAUDI:
            assert (await login(served, login=spelling))[0] == 200, spelling


async def test_the_per_phone_registration_limit_counts_every_form_once(
    ollama: Any, db_url: str, store: str | None, serve: Any
) -> None:
    async with serve(auth_config(ollama, db_url, redis_url=store, register_attempts_per_name=3)) as served:
        statuses = [(await register(served, form(spelling)))[0] for spelling in SAUDI[:4]]
        # One registration, two `phone_taken`, then the phone's allowance is used up however it is typed.
        assert statuses == [201, 422, 422, 429], statuses


def test_stored_phones_move_to_the_one_form_unless_taken(db_url: str) -> None:
    url = sync_url(db_url)
    cfg = migrate.alembic_config(all_version_locations())
    engine = sa.create_engine(url, future=True)
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "auth_keys_0002")  # to just before the phone migration
            accounts = sa.table("accounts", sa.column("id"), sa.column("name"), sa.column("created_at"))
            now = sa.func.current_timestamp()
            for i, phone in enumerate(("+9660551234567", "+96600551234567", "+9710501234567", "+96597654321")):
                conn.execute(sa.insert(accounts).values(id=i + 1, name="a", created_at=now))
                conn.execute(
                    sa.insert(users).values(
                        id=i + 1,
                        account_id=i + 1,
                        name="u",
                        email=f"u{i}@example.com",
                        phone=phone,
                        password_hash="x",
                        created_at=now,
                    )
                )
    finally:
        engine.dispose()
        # Back at every head even when the step above failed: the MariaDB database serves the whole session.
        migrate.upgrade(db_url, all_version_locations())
    engine = sa.create_engine(url, future=True)
    try:
        with engine.connect() as conn:
            phones = dict(conn.execute(sa.select(users.c.id, users.c.phone).order_by(users.c.id)).all())
    finally:
        engine.dispose()
    # The first of two forms of one number gets it; the second keeps its old string (it logs in by email).
    assert phones == {1: "+966551234567", 2: "+96600551234567", 3: "+971501234567", 4: "+96597654321"}
