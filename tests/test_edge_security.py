"""What browsers are told on every non-/v1 answer (CSP, no framing, nosniff, referrer, HSTS behind https),
which client request ids are echoed, and that an absurdly long path is a 414 rather than a 500 in routing."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from edge.app import RequestId
from edge.hookspecs import hookimpl
from tests.conftest import base_config
from tests.support.portal import auth_plugin_entry

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
BROWSER = {
    "content-security-policy": CSP,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=()",
}
HSTS = "max-age=31536000; includeSubDomains"


class Broken:
    """A plugin route that fails the way a bug would: the 500 answer must be protected too."""

    name = "broken_route"

    @hookimpl
    def resayil_routes(self, gateway: Any) -> list[BaseRoute]:
        async def boom(request: Request) -> Response:
            raise RuntimeError("a bug in a plugin route")

        async def framed(request: Request) -> Response:
            return JSONResponse({}, headers={"X-Frame-Options": "SAMEORIGIN"})

        return [Route("/api/boom", boom), Route("/api/framed", framed)]


def config(ollama: Any, db_url: str, public_url: str) -> dict[str, Any]:
    return base_config(
        ollama_url=ollama.url,
        database_url=db_url,
        plugins=[auth_plugin_entry(), {"name": "tiers"}],
        public_url=public_url,
    )


async def answer(gw: Any, method: str, path: str, **kwargs: Any) -> tuple[int, str, dict[str, str]]:
    async with gw.request(method, path, **kwargs) as r:
        await r.read()
        headers = {name.lower(): r.headers.getone(name) for name in r.headers}
        return r.status, r.content_type, headers


def browser_headers(headers: dict[str, str]) -> dict[str, str]:
    return {name: headers[name] for name in (*BROWSER, "strict-transport-security") if name in headers}


async def test_every_portal_and_api_answer_carries_the_browser_headers(ollama: Any, db_url: str, serve: Any) -> None:
    async with serve(config(ollama, db_url, "http://127.0.0.1"), plugins=[Broken()]) as gw:
        results = {
            "portal": await answer(gw, "GET", "/"),
            "portal_index": await answer(gw, "GET", "/index.html"),
            "static_404": await answer(gw, "GET", "/nope.js"),
            "api_json": await answer(gw, "GET", "/api/plans"),
            "api_404": await answer(gw, "GET", "/api/nope"),
            "api_405": await answer(gw, "DELETE", "/api/plans"),
            "api_401": await answer(gw, "GET", "/api/me"),
            "api_422": await answer(gw, "POST", "/api/auth/register", data=b"[1]"),
            "api_500": await answer(gw, "GET", "/api/boom"),
            "healthz": await answer(gw, "GET", "/healthz"),
            "head": await answer(gw, "HEAD", "/healthz"),
        }
    statuses = {name: (status, kind) for name, (status, kind, _) in results.items()}
    assert statuses == {
        "portal": (200, "text/html"),
        "portal_index": (200, "text/html"),
        "static_404": (404, "application/json"),
        "api_json": (200, "application/json"),
        "api_404": (404, "application/json"),
        "api_405": (405, "application/json"),
        "api_401": (401, "application/json"),
        "api_422": (422, "application/json"),
        "api_500": (500, "application/json"),
        "healthz": (200, "application/json"),
        "head": (200, "application/json"),
    }
    for name, (_, _, headers) in results.items():
        assert browser_headers(headers) == BROWSER, name  # and no HSTS over plain http


async def test_a_header_the_route_set_itself_is_kept(ollama: Any, sqlite_url: str, serve: Any) -> None:
    async with serve(config(ollama, sqlite_url, "http://127.0.0.1"), plugins=[Broken()]) as gw:
        status, _, headers = await answer(gw, "GET", "/api/framed")
    assert status == 200
    assert headers["x-frame-options"] == "SAMEORIGIN"
    assert browser_headers(headers) == {**BROWSER, "x-frame-options": "SAMEORIGIN"}


@pytest.mark.parametrize(
    ("public_url", "forwarded", "hsts"),
    [
        ("https://portal.example.test", None, True),
        ("http://127.0.0.1", "https", True),
        ("http://127.0.0.1", "HTTPS, http", True),
        ("http://127.0.0.1", "http", False),
        ("http://127.0.0.1", None, False),
    ],
)
async def test_hsts_only_when_the_request_came_over_https(
    ollama: Any, sqlite_url: str, serve: Any, public_url: str, forwarded: str | None, hsts: bool
) -> None:
    headers = {"X-Forwarded-Proto": forwarded} if forwarded else {}
    async with serve(config(ollama, sqlite_url, public_url)) as gw:
        seen = [
            (await answer(gw, "GET", path, headers=headers))[2].get("strict-transport-security")
            for path in ("/", "/api/plans", "/api/nope", "/healthz")
        ]
    assert seen == [HSTS if hsts else None] * 4


SANE = ["abc-123_X.y:z", "x" * 128, "req_0123456789abcdef"]
HOSTILE = [
    "has space",
    "<script>alert(1)</script>",
    "x" * 129,
    'quote"d',
    "semi;colon",
    "tab\there",
    "caf\u00e9",  # aiohttp sends it as UTF-8 bytes: non-ASCII
    "%0d%0aSet-Cookie:%20x=1",
    "../../etc/passwd",
]


async def test_api_echoes_only_a_sane_client_request_id(ollama: Any, sqlite_url: str, serve: Any) -> None:
    async with serve(config(ollama, sqlite_url, "http://127.0.0.1")) as gw:
        echoed = {
            value: (await answer(gw, "GET", "/api/plans", headers={"X-Request-Id": value}))[2]["x-request-id"]
            for value in SANE + HOSTILE
        }
    for value in SANE:
        assert echoed[value] == value
    for value in HOSTILE:
        assert echoed[value] != value
        assert echoed[value].startswith("req_") and len(echoed[value]) == 28, echoed[value]


@pytest.mark.parametrize(
    "value", [b"abc\r\nSet-Cookie: session=attacker", b"abc\n", b"nul\x00byte", b"\x7f", b"caf\xe9", b""]
)
async def test_request_id_bytes_no_http_parser_here_would_pass_are_replaced_too(value: bytes) -> None:
    # granian's parser is not uvicorn's: the middleware must not rely on either to drop these bytes.
    sent: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def send(message: Any) -> None:
        sent.append(message)

    async def receive() -> Any:
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "path": "/api/plans", "headers": [(b"x-request-id", value)]}
    await RequestId(app)(scope, receive, send)
    (echoed,) = [v for k, v in sent[0]["headers"] if k == b"x-request-id"]
    assert echoed != value
    assert echoed.startswith(b"req_") and len(echoed) == 28


async def test_a_path_too_long_to_route_is_414_not_500(ollama: Any, db_url: str, serve: Any) -> None:
    # Starlette's `{id:int}` calls int() on the digits; past 4,300 of them Python raises in routing.
    digits = "9" * 5000
    async with serve(config(ollama, db_url, "http://127.0.0.1")) as gw:
        results = {}
        for method, path in [
            ("PATCH", f"/api/admin/accounts/{digits}"),
            ("DELETE", f"/api/keys/{digits}"),
            ("GET", f"/{'a' * 2049}"),
        ]:
            async with gw.request(method, path, json={}) as r:
                results[path[:20]] = (r.status, (await r.json())["error"]["code"], r.headers["x-frame-options"])
        async with gw.request("GET", f"/{'a' * 2040}.js") as r:
            just_under = r.status
    assert set(results.values()) == {(414, "uri_too_long", "DENY")}
    assert just_under == 404


_URL_ATTRIBUTES = ("src", "href", "action", "formaction", "srcset", "poster", "data")


class _Blocked(HTMLParser):
    """What in a page the CSP above would block: inline script or style, handlers, javascript: URLs and
    resources from another origin."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self._inline: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "style" or (tag == "script" and not values.get("src")):
            self._inline = tag
        for name, value in attrs:
            text = (value or "").strip().lower()
            if name.startswith("on") or name == "style":
                self.found.append(f"<{tag} {name}=...>")
            elif name in _URL_ATTRIBUTES and text.startswith(("javascript:", "http:", "https:", "//")):
                self.found.append(f"<{tag} {name}={value}>")

    def handle_data(self, data: str) -> None:
        if self._inline and data.strip():
            self.found.append(f"inline <{self._inline}>")

    def handle_endtag(self, tag: str) -> None:
        self._inline = None


async def test_the_portal_page_uses_nothing_the_csp_blocks(ollama: Any, sqlite_url: str, serve: Any) -> None:
    async with serve(config(ollama, sqlite_url, "http://127.0.0.1")) as gw:
        async with gw.request("GET", "/") as r:
            page = await r.text()
            assert r.headers["content-security-policy"] == CSP
    parser = _Blocked()
    parser.feed(page)
    assert parser.found == []
