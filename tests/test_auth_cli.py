"""`python -m edge create-admin`: creates an admin (password from the environment or a prompt) or promotes
an existing user, and refuses bad input with exit code 1."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml

from plugins.auth_keys.tables import users
from tests.support.portal import auth_config, login, register_user, unique_email, unique_phone

ROOT = Path(__file__).resolve().parent.parent


async def create_admin(
    config_file: Path, *args: str, password: str | None = None, stdin: bytes = b""
) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if k != "RESAYIL_ADMIN_PASSWORD"}
    if password is not None:
        env["RESAYIL_ADMIN_PASSWORD"] = password
    # A new session has no controlling terminal, so a prompt reads stdin instead of hanging on a tty.
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edge",
        "--config",
        str(config_file),
        "create-admin",
        *args,
        cwd=ROOT,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    out, _ = await asyncio.wait_for(proc.communicate(stdin), timeout=60)
    return int(proc.returncode or 0), out.decode()


def write_config(tmp_path: Path, config: dict[str, Any]) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path


async def test_create_admin_with_the_password_from_the_environment(
    ollama: Any, db_url: str, serve: Any, tmp_path: Path
) -> None:
    config = auth_config(ollama, db_url)
    config_file = write_config(tmp_path, config)
    email, phone = unique_email(), unique_phone()
    code, out = await create_admin(
        config_file, "--email", email.upper(), "--phone", phone, password="admin passphrase 1"
    )
    assert code == 0, out
    assert "admin passphrase 1" not in out
    async with serve(config) as served:
        status, body, _ = await login(served, login=email, password="admin passphrase 1")
        assert status == 200, body
        assert (body["user"]["role"], body["user"]["email"], body["user"]["tier"]) == ("admin", email, "basic")


async def test_create_admin_promotes_an_existing_user(ollama: Any, db_url: str, serve: Any, tmp_path: Path) -> None:
    config = auth_config(ollama, db_url)
    config_file = write_config(tmp_path, config)
    async with serve(config) as served:
        user = await register_user(served)
    code, out = await create_admin(config_file, "--email", user.email, "--phone", user.phone)
    assert code == 0, out
    async with serve(config) as served:
        async with served.request("GET", "/api/me", headers=user.headers) as resp:
            assert (await resp.json())["user"]["role"] == "admin"
        # Promoting keeps the user's own password.
        assert (await login(served, login=user.email))[0] == 200


async def test_create_admin_prompts_when_no_password_is_set(
    ollama: Any, db_url: str, serve: Any, tmp_path: Path
) -> None:
    config = auth_config(ollama, db_url)
    config_file = write_config(tmp_path, config)
    email, phone = unique_email(), unique_phone()
    code, out = await create_admin(
        config_file, "--email", email, "--phone", phone, stdin=b"typed passphrase\ntyped passphrase\n"
    )
    assert code == 0, out
    assert "typed passphrase" not in out
    code, out = await create_admin(
        config_file,
        "--email",
        unique_email(),
        "--phone",
        unique_phone(),
        stdin=b"first passphrase\nsecond passphrase\n",
    )
    assert code == 1 and "password_mismatch" in out
    async with serve(config) as served:
        assert (await login(served, login=email, password="typed passphrase"))[0] == 200


async def test_create_admin_refuses_bad_input(ollama: Any, db_url: str, serve: Any, tmp_path: Path) -> None:
    config = auth_config(ollama, db_url)
    config_file = write_config(tmp_path, config)
    async with serve(config) as served:
        taken = await register_user(served)
    for args, password, code_text in (
        (("--email", "not-an-email", "--phone", unique_phone()), "long enough pw", "email_invalid"),
        (("--email", unique_email(), "--phone", "123"), "long enough pw", "phone_invalid"),
        (("--email", unique_email(), "--phone", unique_phone()), "short", "password_too_short"),
        (("--email", unique_email(), "--phone", taken.phone), "long enough pw", "phone_taken"),
        (("--email", unique_email(), "--phone", unique_phone()), "password1234", "password_too_weak"),
        (("--email", "boss.admin@example.com", "--phone", unique_phone()), "boss.admin!", "password_personal"),
    ):
        code, out = await create_admin(config_file, *args, password=password)
        assert code == 1 and code_text in out, out
    async with serve(config) as served, served.gateway.database.connect() as conn:
        roles = (await conn.execute(sa.select(users.c.role))).scalars().all()
    assert roles == ["user"]
