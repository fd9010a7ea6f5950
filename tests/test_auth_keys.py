"""The portal's key API: a secret shown once, only its hash stored, listing, revoking, and no way to find or
touch another account's keys."""

from __future__ import annotations

import base64
import hashlib
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from plugins.auth_keys.tables import api_keys
from tests.support.inputs import field_codes
from tests.support.portal import auth_config, bearer, create_key, register_user

KEY_FIELDS = {"id", "name", "prefix", "scopes", "created_at", "expires_at", "last_used_at", "revoked_at", "limit_milli"}
KEY_FIELDS |= {"limit_period"}
ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


async def call(served: Any, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with served.request(method, path, **kwargs) as resp:
        return resp.status, await resp.json()


async def test_a_new_key_shows_its_secret_once_and_stores_only_a_hash(ollama: Any, db_url: str, serve: Any) -> None:
    async with serve(auth_config(ollama, db_url)) as served:
        user = await register_user(served)
        async with served.request("POST", "/api/keys", headers=user.headers, json={"name": "production"}) as resp:
            assert resp.status == 201
            assert resp.headers["Cache-Control"] == "no-store"
            data = await resp.json()
        key, secret = data["key"], data["secret"]
        assert set(key) == KEY_FIELDS
        assert (key["name"], key["scopes"], key["expires_at"], key["last_used_at"], key["revoked_at"]) == (
            "production",
            ["read", "write"],
            None,
            None,
            None,
        )
        assert ISO_Z.match(key["created_at"])
        assert re.fullmatch(r"rsk_[A-Za-z0-9_-]+", secret)
        random_part = secret.removeprefix("rsk_")
        assert len(base64.urlsafe_b64decode(random_part + "=" * (-len(random_part) % 4))) >= 32
        assert key["prefix"] == secret[:12] and len(key["prefix"]) < len(secret) // 3

        async with served.gateway.database.connect() as conn:
            row = (await conn.execute(sa.select(api_keys).where(api_keys.c.id == key["id"]))).one()
        assert row.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
        assert all(secret not in str(value) and random_part[8:] not in str(value) for value in row)

        async with served.request("GET", "/api/keys", headers=user.headers) as resp:
            text = await resp.text()
            listed = (await resp.json())["data"]
        assert listed == [key]
        assert "secret" not in text and random_part[8:] not in text

        another = await create_key(served, user, scopes=("read",))
        assert another != secret
        status, body = await call(served, "GET", "/api/keys", headers=user.headers)
        assert status == 200
        assert [k["scopes"] for k in body["data"]] == [["read"], ["read", "write"]]


async def test_key_fields_are_checked(ollama: Any, db_url: str, serve: Any) -> None:
    async with serve(auth_config(ollama, db_url)) as served:
        user = await register_user(served)
        past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
        cases = [
            ({}, {"name": "name_required"}),
            ({"name": "k", "scopes": ["admin"]}, {"scopes": "scopes_invalid"}),
            ({"name": "k", "scopes": []}, {"scopes": "scopes_invalid"}),
            ({"name": "k", "scopes": "read write"}, {"scopes": "scopes_invalid"}),
            ({"name": "k", "expires_at": "next tuesday"}, {"expires_at": "expires_at_invalid"}),
            ({"name": "k", "expires_at": 1893456000}, {"expires_at": "expires_at_invalid"}),
            ({"name": "k", "expires_at": past}, {"expires_at": "expires_at_past"}),
            ({"name": "k" * 101}, {"name": "name_too_long"}),
        ]
        # Extreme instants: offsets that carry year 9999 or year 1 out of range, the edges of the range, and
        # anything past the ten-year maximum. Each answered 500 before (or was stored for ever).
        ten_years = datetime.now(UTC) + timedelta(days=3653, minutes=1)
        for extreme, code in (
            ("9999-12-31T23:59:59-23:59", "expires_at_invalid"),
            ("9999-12-31T23:59:59-00:01", "expires_at_invalid"),
            ("0001-01-01T00:00:00+23:59", "expires_at_invalid"),
            ("0001-01-01T00:00:00+00:01", "expires_at_invalid"),
            ("0001-01-01T00:00:00", "expires_at_past"),
            ("9999-12-31T23:59:59", "expires_at_too_far"),
            ("9999-12-31T23:59:59+23:59", "expires_at_too_far"),
            ("10000-01-01T00:00:00Z", "expires_at_invalid"),
            (ten_years.isoformat(), "expires_at_too_far"),
        ):
            cases.append(({"name": "k", "expires_at": extreme}, {"expires_at": code}))
        for body, fields in cases:
            status, data = await call(served, "POST", "/api/keys", headers=user.headers, json=body)
            assert (status, field_codes(data)) == (422, fields), body
        year = datetime.now(UTC).year + 5
        nearly_ten_years = (datetime.now(UTC) + timedelta(days=3652)).isoformat()
        status, data = await call(
            served,
            "POST",
            "/api/keys",
            headers=user.headers,
            json={"name": "ci", "scopes": ["delete", "read", "read"], "expires_at": f"{year}-01-01T03:00:00+03:00"},
        )
        assert status == 201, data
        assert data["key"]["scopes"] == ["read", "delete"]
        assert data["key"]["expires_at"] == f"{year}-01-01T00:00:00Z"
        # Just inside the maximum is accepted.
        status, data = await call(
            served, "POST", "/api/keys", headers=user.headers, json={"name": "long", "expires_at": nearly_ten_years}
        )
        assert status == 201, data
        assert (await call(served, "GET", "/api/keys"))[0] == 401


async def test_revoking_keeps_the_row_and_stops_the_key(ollama: Any, db_url: str, serve: Any) -> None:
    async with serve(auth_config(ollama, db_url)) as served:
        user = await register_user(served)
        secret = await create_key(served, user)
        async with served.request("GET", "/v1/models", headers=bearer(secret)) as resp:
            assert resp.status == 200
        status, body = await call(served, "GET", "/api/keys", headers=user.headers)
        key_id = body["data"][0]["id"]
        status, body = await call(served, "DELETE", f"/api/keys/{key_id}", headers=user.headers)
        assert status == 200 and ISO_Z.match(body["key"]["revoked_at"])
        revoked_at = body["key"]["revoked_at"]
        async with served.request("GET", "/v1/models", headers=bearer(secret)) as resp:
            assert resp.status == 401
        # Revoking again changes nothing; the row stays for the audit trail.
        status, again = await call(served, "DELETE", f"/api/keys/{key_id}", headers=user.headers)
        assert (status, again["key"]["revoked_at"]) == (200, revoked_at)
        status, body = await call(served, "GET", "/api/keys", headers=user.headers)
        assert [(k["id"], k["revoked_at"]) for k in body["data"]] == [(key_id, revoked_at)]
        async with served.gateway.database.connect() as conn:
            assert await conn.scalar(sa.select(sa.func.count()).select_from(api_keys)) == 1


async def test_another_accounts_keys_cannot_be_found_or_revoked(ollama: Any, db_url: str, serve: Any) -> None:
    async with serve(auth_config(ollama, db_url)) as served:
        owner = await register_user(served)
        intruder = await register_user(served)
        secret = await create_key(served, owner)
        status, body = await call(served, "GET", "/api/keys", headers=owner.headers)
        key_id = body["data"][0]["id"]

        status, theirs = await call(served, "DELETE", f"/api/keys/{key_id}", headers=intruder.headers)
        status_missing, missing = await call(served, "DELETE", "/api/keys/987654", headers=intruder.headers)
        assert status == status_missing == 404
        assert theirs == missing and theirs["error"]["code"] == "key_not_found"
        huge = await call(served, "DELETE", f"/api/keys/{10**30}", headers=intruder.headers)
        assert huge == (404, missing)
        assert (await call(served, "GET", "/api/keys", headers=intruder.headers))[1]["data"] == []
        async with served.request("GET", "/v1/models", headers=bearer(secret)) as resp:
            assert resp.status == 200
