"""`python -m edge create-admin --email … --phone …`: create an admin, or promote an existing user.

The password comes from RESAYIL_ADMIN_PASSWORD or, when that is unset, from a prompt; it is never an
argument, so it stays out of shell history and process lists.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from typing import TYPE_CHECKING

from edge.cli import Command
from edge.inputs import FieldError
from plugins.auth_keys import inputs, strength
from plugins.auth_keys.inputs import MESSAGES
from plugins.auth_keys.users import Taken

if TYPE_CHECKING:
    from edge.gateway import Gateway
    from plugins.auth_keys import Plugin

PASSWORD_ENV = "RESAYIL_ADMIN_PASSWORD"


def create_admin(plugin: Plugin) -> Command:
    async def run(gateway: Gateway, args: argparse.Namespace) -> int:
        return await run_create_admin(plugin, args)

    return Command("create-admin", "create an admin user, or promote an existing one", run, _arguments)


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--email", required=True)
    parser.add_argument("--phone", required=True)
    parser.add_argument("--name", default="Administrator")
    parser.add_argument("--locale", default="ar", choices=inputs.LOCALES)


def _fail(field: str, code: str) -> int:
    print(f"create-admin: {field}: {MESSAGES.get(code, code)} ({code})", file=sys.stderr)
    return 1


def _prompt() -> str:
    first = getpass.getpass("Password for the new admin: ")
    if getpass.getpass("Repeat it: ") != first:
        raise FieldError("password_mismatch")
    return first


async def run_create_admin(plugin: Plugin, args: argparse.Namespace) -> int:
    try:
        email = inputs.email(args.email)
    except FieldError as exc:
        return _fail("email", exc.code)
    try:
        phone = inputs.phone(args.phone)
    except FieldError as exc:
        return _fail("phone", exc.code)
    existing = await plugin.users.find(email=email)
    if existing is not None:
        if existing.role != "admin":
            await plugin.users.update(user_id=existing.id, values={"role": "admin"})
            await plugin.accounts.invalidate_user(existing.id)
        print(f"create-admin: {email} (user {existing.id}) is an admin")
        return 0
    if await plugin.users.find(phone=phone) is not None:
        return _fail("phone", "phone_taken")
    try:
        name = inputs.name(args.name)
        raw = os.environ.get(PASSWORD_ENV) or await asyncio.to_thread(_prompt)
        password = inputs.password(raw)
    except FieldError as exc:
        return _fail("name" if exc.code.startswith("name") else "password", exc.code)
    weak = await strength.check(password, email=email, phone=phone, min_score=plugin.settings.password_min_score)
    if weak is not None:
        return _fail("password", weak)
    try:
        user_id, _ = await plugin.users.create(
            name=name,
            email=email,
            phone=phone,
            password_hash=await plugin.passwords.hash(password),
            locale=args.locale,
            tier=plugin.settings.registration_tier,
            role="admin",
        )
    except Taken as exc:
        field, code = next(iter(exc.fields.items()))
        return _fail(field, code)
    print(f"create-admin: created admin {email} (user {user_id})")
    return 0
