"""Tests of the fake WhatsApp provider: both Resayil shapes and the Cloud API, as strict as the real ones."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import subprocess
import sys
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest
from aiohttp import web

from tests.conftest import ROOT
from tests.fakes.whatsapp import CloudTemplate, FakeSettings, FakeWhatsApp, run_fake
from tests.support.servers import free_port

Json = dict[str, object]
AUTH = {"Authorization": "Bearer test-token"}
PHONE = "+96512345678"
TEMPLATES = [CloudTemplate("credits_low", "ar", 2), CloudTemplate("credits_low", "en_US", 2)]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def fake(clock: Clock) -> AsyncIterator[FakeWhatsApp]:
    async with run_fake(FakeSettings(templates=list(TEMPLATES), clock=clock)) as f:
        yield f


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def text_body(to: str = PHONE, text: str = "مرحبا") -> Json:
    return {"to": to, "type": "text", "text": {"body": text}}


def cloud_body(to: str = "96512345678", name: str = "credits_low", code: str = "ar", params: int = 2) -> Json:
    parameters = [{"type": "text", "text": f"v{i}"} for i in range(params)]
    return {
        "messaging_product": "whatsapp",
        "to": to,
        "type": "template",
        "template": {
            "name": name,
            "language": {"code": code},
            "components": [{"type": "body", "parameters": parameters}],
        },
    }


async def post(
    http: aiohttp.ClientSession, url: str, body: object, headers: dict[str, str] | None = None
) -> tuple[int, Json]:
    async with http.post(url, json=body, headers=AUTH if headers is None else headers) as r:
        data = await r.json(content_type=None)
        assert isinstance(data, dict)
        return r.status, data


def send_url(fake: FakeWhatsApp) -> str:
    return fake.url + "/api/v1/messages/send"


def cloud_url(fake: FakeWhatsApp) -> str:
    return fake.url + "/v21.0/1234567890/messages"


def graph_code(data: Json) -> object:
    error = data["error"]
    assert isinstance(error, dict)
    assert set(error) >= {"message", "type", "code", "fbtrace_id"}
    return error["code"]


# ---------------------------------------------------------------------------- Resayil shapes


async def test_resayil_send_answers_a_message_id_and_records_the_text(fake: FakeWhatsApp, http: aiohttp.ClientSession):
    status, data = await post(http, send_url(fake), text_body(text="رصيدك منخفض"))
    assert status == 200
    assert data["success"] is True
    assert isinstance(data["message_id"], str)
    [got] = fake.accepted
    assert (got["api"], got["to"], got["text"], got["message_id"]) == (
        "resayil",
        PHONE,
        "رصيدك منخفض",
        data["message_id"],
    )
    async with http.get(f"{fake.url}/api/v1/messages/{data['message_id']}/status", headers=AUTH) as r:
        assert r.status == 200
        assert (await r.json())["status"] == "delivered"


async def test_legacy_shape_takes_phone_message_and_language(fake: FakeWhatsApp, http: aiohttp.ClientSession):
    body = {"phone": PHONE, "message": "hello", "language": "en"}
    status, data = await post(http, fake.url + "/api/v1/send", body)
    assert status == 200 and isinstance(data["message_id"], str)
    assert fake.accepted[0]["api"] == "legacy" and fake.accepted[0]["language"] == "en"
    status, data = await post(http, fake.url + "/api/v1/send", {**body, "language": "fr"})
    assert status == 400


@pytest.mark.parametrize("phone", ["96512345678", "12345678", "+965 1234 5678", "+0965123456", "", 96512345678])
async def test_resayil_refuses_a_phone_that_is_not_e164(fake: FakeWhatsApp, http: aiohttp.ClientSession, phone: object):
    status, data = await post(http, send_url(fake), text_body(to=phone))  # type: ignore[arg-type]
    assert status == 400
    assert data["success"] is False and data["error"] == {"code": 100, "message": data["error"]["message"]}  # type: ignore[index]
    assert fake.accepted == []


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "test-token"}, {"Authorization": "bearer test-token"}],
)
async def test_every_route_needs_the_exact_bearer_token(
    fake: FakeWhatsApp, http: aiohttp.ClientSession, headers: dict[str, str]
):
    assert (await post(http, send_url(fake), text_body(), headers))[0] == 401
    status, data = await post(http, cloud_url(fake), cloud_body(), headers)
    assert status == 401 and graph_code(data) == 190
    async with http.get(fake.url + "/api/v1/messages/msg_00000001/status", headers=headers) as r:
        assert r.status == 401
    assert fake.accepted == []


async def test_two_xx_without_a_message_id(fake: FakeWhatsApp, http: aiohttp.ClientSession):
    fake.settings.missing_id = True
    status, data = await post(http, send_url(fake), text_body())
    assert (status, data) == (200, {"success": True})
    status, data = await post(http, cloud_url(fake), cloud_body(to="96599999999"))
    assert status == 200 and data["messages"] == []


# ---------------------------------------------------------------------------- Cloud API


async def test_cloud_template_in_an_approved_locale(fake: FakeWhatsApp, http: aiohttp.ClientSession):
    status, data = await post(http, cloud_url(fake), cloud_body(code="en_US"))
    assert status == 200
    assert data["messaging_product"] == "whatsapp"
    [message] = data["messages"]  # type: ignore[misc]
    [got] = fake.accepted
    assert (got["template"], got["language"], got["params"], got["message_id"]) == (
        "credits_low",
        "en_US",
        ["v0", "v1"],
        message["id"],
    )


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (cloud_body(code="en"), 404, 132001),  # approved as en_US: en is another locale
        (cloud_body(name="credits_lowx"), 404, 132001),
        (cloud_body(params=3), 400, 132000),
        (cloud_body(to="+96512345678"), 400, 100),
        (cloud_body(to="abc"), 400, 100),
        ({**cloud_body(), "messaging_product": "sms"}, 400, 100),
        ({"messaging_product": "whatsapp", "to": "96512345678", "type": "text", "text": {"body": "hi"}}, 400, 131047),
    ],
)
async def test_cloud_refusals_use_the_graph_envelope(
    fake: FakeWhatsApp, http: aiohttp.ClientSession, body: Json, status: int, code: int
):
    answered, data = await post(http, cloud_url(fake), body)
    assert (answered, graph_code(data)) == (status, code)
    assert fake.received[-1]["code"] == code and fake.accepted == []


@pytest.mark.parametrize("text", ["line\nbreak", "tab\there", "five     spaces", ""])
async def test_cloud_template_parameters_follow_metas_rules(fake: FakeWhatsApp, http: aiohttp.ClientSession, text: str):
    body = cloud_body()
    body["template"]["components"][0]["parameters"][0]["text"] = text  # type: ignore[index]
    status, data = await post(http, cloud_url(fake), body)
    assert (status, graph_code(data)) == (400, 132018)


async def test_cloud_text_is_allowed_inside_the_customer_window(fake: FakeWhatsApp, http: aiohttp.ClientSession):
    fake.settings.open_windows.add("96512345678")
    body = {"messaging_product": "whatsapp", "to": "96512345678", "type": "text", "text": {"body": "hi"}}
    assert (await post(http, cloud_url(fake), body))[0] == 200


async def test_cloud_refuses_another_phone_number_id(fake: FakeWhatsApp, http: aiohttp.ClientSession):
    status, data = await post(http, fake.url + "/v21.0/999/messages", cloud_body())
    assert (status, graph_code(data)) == (400, 100)


# ---------------------------------------------------------------------------- knobs


@pytest.mark.parametrize(
    ("code", "cloud_status", "resayil_status"),
    [
        (130429, 429, 429),
        (131056, 400, 429),
        (131000, 500, 500),
        (131016, 503, 503),
        (131026, 400, 400),
        (131050, 400, 400),
        (132001, 404, 404),
        (100, 400, 400),
        (190, 401, 401),
        (368, 403, 403),
        (131031, 403, 403),
    ],
)
async def test_queued_error_codes(
    fake: FakeWhatsApp, http: aiohttp.ClientSession, code: int, cloud_status: int, resayil_status: int
):
    fake.settings.fail_next = [code, code]
    status, data = await post(http, cloud_url(fake), cloud_body())
    assert (status, graph_code(data)) == (cloud_status, code)
    if code == 190:
        assert data["error"]["error_subcode"] == 463  # type: ignore[index]
    status, data = await post(http, send_url(fake), text_body())
    assert (status, data["error"]["code"]) == (resayil_status, code)  # type: ignore[index]
    # Consumed: the next send goes through.
    assert (await post(http, send_url(fake), text_body()))[0] == 200


async def test_pair_rate_refuses_a_second_message_to_one_recipient(
    fake: FakeWhatsApp, http: aiohttp.ClientSession, clock: Clock
):
    assert (await post(http, send_url(fake), text_body()))[0] == 200
    clock.now += 5.9
    status, data = await post(http, send_url(fake), text_body())
    assert (status, data["error"]["code"]) == (429, 131056)  # type: ignore[index]
    # The same recipient on the Cloud API shares the pair; another recipient does not.
    status, data = await post(http, cloud_url(fake), cloud_body())
    assert (status, graph_code(data)) == (400, 131056)
    assert (await post(http, send_url(fake), text_body(to="+96587654321")))[0] == 200
    clock.now += 0.2
    assert (await post(http, cloud_url(fake), cloud_body()))[0] == 200


async def test_outage_and_latency(fake: FakeWhatsApp, http: aiohttp.ClientSession):
    fake.settings.outage_status = 502
    async with http.post(send_url(fake), json=text_body(), headers=AUTH) as r:
        assert r.status == 502 and r.content_type == "text/html"
    fake.settings.outage_status = None
    fake.settings.latency = 0.3
    with pytest.raises(asyncio.TimeoutError):
        async with http.post(send_url(fake), json=text_body(), headers=AUTH, timeout=aiohttp.ClientTimeout(total=0.1)):
            pass


async def test_reset_closes_the_connection(fake: FakeWhatsApp, http: aiohttp.ClientSession):
    fake.settings.reset = True
    with pytest.raises(aiohttp.ClientError):
        async with http.post(send_url(fake), json=text_body(), headers=AUTH):
            pass


async def test_status_webhooks_are_signed_and_report_failures(http: aiohttp.ClientSession):
    got: list[tuple[str, Json]] = []

    async def hook(request: web.Request) -> web.Response:
        raw = await request.read()
        got.append((request.headers["X-Hub-Signature-256"], orjson.loads(raw)))
        expected = "sha256=" + hmac.new(b"test-app-secret", raw, hashlib.sha256).hexdigest()
        return web.Response(status=200 if request.headers["X-Hub-Signature-256"] == expected else 403)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        settings = FakeSettings(
            templates=list(TEMPLATES), webhook_url=f"http://127.0.0.1:{port}/hook", undeliverable={"+96500000001"}
        )
        async with run_fake(settings) as fake:
            assert (await post(http, cloud_url(fake), cloud_body()))[0] == 200
            assert (await post(http, cloud_url(fake), cloud_body(to="96500000001")))[0] == 200
            await fake.webhooks_sent()
            assert fake.webhook_answers == [200, 200, 200, 200]
    finally:
        await runner.cleanup()
    statuses = [body["entry"][0]["changes"][0]["value"]["statuses"][0] for _, body in got]  # type: ignore[index]
    by_recipient = {(s["recipient_id"], s["status"]) for s in statuses}
    assert by_recipient == {
        ("96512345678", "sent"),
        ("96512345678", "delivered"),
        ("96512345678", "read"),
        ("96500000001", "failed"),
    }
    [failed] = [s for s in statuses if s["status"] == "failed"]
    assert failed["errors"][0]["code"] == 131026


def test_runs_as_a_process():
    port = free_port()
    with subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.whatsapp", "--port", str(port), "--pair-interval", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == f"ready http://127.0.0.1:{port}"

            async def send() -> int:
                async with aiohttp.ClientSession() as http:
                    return (await post(http, f"http://127.0.0.1:{port}/api/v1/messages/send", text_body()))[0]

            assert asyncio.run(send()) == 200
        finally:
            proc.terminate()
            proc.wait(timeout=10)
