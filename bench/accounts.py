"""What a chain with authentication needs before load: a customer with a plan, credits and an API key.

Done the way an operator and a customer would, over the portal's API: register, promote that user to admin
with `python -m edge create-admin`, log in again, set the plan, grant credits, create an API key. The key's
secret travels as the `Authorization` header of every benchmark request.
"""

from __future__ import annotations

import http.cookiejar
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import orjson

from bench.procs import BenchError
from bench.targets import BenchEnv, Running

PASSWORD = "lineup passphrase 1234"


class Portal:
    """A logged-in browser, in short: cookies kept, the CSRF token sent with every write."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        self.csrf = ""

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        headers = {"Content-Type": "application/json"}
        if self.csrf:
            headers["X-CSRF-Token"] = self.csrf
        data = orjson.dumps(body) if body is not None else None
        request = urllib.request.Request(self.base_url + path, data=data, method=method, headers=headers)
        try:
            with self.opener.open(request, timeout=30) as resp:
                answer = orjson.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise BenchError(f"{method} {path} answered {exc.code}: {exc.read()[:300]!r}") from None
        if isinstance(answer, dict) and "csrf_token" in answer:
            self.csrf = answer["csrf_token"]
        return answer


@dataclass(frozen=True)
class Customer:
    """The account the load runs as: its plan and credits (milli-credits), and key scopes."""

    # None: leave the plan alone (without the tiers and credits plugins there are neither plans nor credits)
    tier: str | None = "enterprise"
    credits_milli: int = 10**12
    email: str = "bench@example.com"
    phone: str = "+96590000001"

    def __call__(self, env: BenchEnv, running: Running, environ: dict[str, str]) -> dict[str, str]:
        portal = Portal(running.base_url)
        registered = portal.call(
            "POST",
            "/api/auth/register",
            {"name": "Bench", "email": self.email, "phone": self.phone, "password": PASSWORD, "locale": "en"},
        )
        account_id = registered["user"]["account_id"]
        promote = subprocess.run(
            [env.python, "-m", "edge", "create-admin", "--email", self.email, "--phone", self.phone],
            cwd=env.src,
            env={**environ, "RESAYIL_ADMIN_PASSWORD": PASSWORD},
            capture_output=True,
            text=True,
            check=False,
        )
        if promote.returncode != 0:
            raise BenchError(f"create-admin failed: {promote.stderr.strip()}")
        portal.call("POST", "/api/auth/login", {"login": self.email, "password": PASSWORD})
        if self.tier is not None:
            portal.call("PATCH", f"/api/admin/accounts/{account_id}", {"tier": self.tier})
        if self.credits_milli:
            portal.call(
                "POST",
                f"/api/admin/accounts/{account_id}/credits",
                {"delta_milli": self.credits_milli, "reason": "benchmark"},
            )
        key = portal.call("POST", "/api/keys", {"name": "bench", "scopes": ["read", "write"]})
        return {"Authorization": f"Bearer {key['secret']}"}
