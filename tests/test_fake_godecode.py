"""The fake reads bodies as Ollama's Go server does: folded keys, the last one wins, only max_tokens caps."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from tests.fakes import godecode
from tests.fakes.ollama import FakeOllama, run_fake

MESSAGES = [{"role": "user", "content": "hello world"}]


@pytest.fixture
async def fake() -> AsyncIterator[FakeOllama]:
    async with run_fake() as f:
        yield f


async def chat(fake: FakeOllama, raw: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{fake.url}/v1/chat/completions", data=raw.encode()) as r:
            body = await r.read()
            if r.content_type == "text/event-stream":
                return r.status, body
            return r.status, orjson.loads(body)


def msgs() -> str:
    return orjson.dumps(MESSAGES).decode()


def test_fold_matches_go() -> None:
    assert godecode.fold("max_tokens") == godecode.fold("MAX_TOKENS") == godecode.fold("Max_Tokens")
    assert godecode.fold("\u017ftream") == godecode.fold("stream")  # long s folds to S
    assert godecode.fold("max_to\u212aens") == godecode.fold("max_tokens")  # Kelvin sign folds to K
    assert godecode.fold("mod\u0131l") != godecode.fold("modil")  # dotless i folds only to itself
    assert godecode.fold("MODEL") != godecode.fold("models")


async def test_max_completion_tokens_does_not_limit_generation(fake: FakeOllama) -> None:
    status, data = await chat(fake, f'{{"model":"m","messages":{msgs()},"max_completion_tokens":2}}')
    assert status == 200
    assert data["usage"]["completion_tokens"] == 5
    assert data["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(
    ("spelling", "tokens"),
    [
        ('"max_tokens":2', 2),
        ('"MAX_TOKENS":2', 2),
        ('"max_to\u212aens":3', 3),
        ('"max_tokens":1,"Max_Tokens":3', 3),
        ('"Max_Tokens":3,"max_tokens":1', 1),
        ('"max_tokens":2,"max_tokens":null', 5),  # a pointer field: null clears it
    ],
)
async def test_the_last_folded_key_wins(fake: FakeOllama, spelling: str, tokens: int) -> None:
    status, data = await chat(fake, f'{{"model":"m","messages":{msgs()},{spelling}}}')
    assert status == 200
    assert data["usage"]["completion_tokens"] == tokens


async def test_model_spellings_reach_the_last_model(fake: FakeOllama) -> None:
    status, data = await chat(fake, f'{{"model":"small","messages":{msgs()},"Model":"hidden"}}')
    assert status == 200
    assert data["model"] == "hidden"
    assert fake.served[-1]["model"] == "hidden"
    assert fake.served[-1]["decoded"]["model"] == "hidden"


async def test_null_leaves_a_plain_field_and_folded_stream_streams(fake: FakeOllama) -> None:
    status, raw = await chat(fake, f'{{"model":"m","messages":{msgs()},"\u017ftream":true,"STREAM":null}}')
    assert status == 200
    assert raw.endswith(b"data: [DONE]\n\n")


async def test_stream_options_merge_into_the_earlier_object(fake: FakeOllama) -> None:
    options = '"stream_options":{"include_usage":true},"Stream_Options":{}'
    raw = f'{{"model":"m","messages":{msgs()},"stream":true,{options}}}'
    status, body = await chat(fake, raw)
    assert status == 200
    assert b'"usage":{"prompt_tokens"' in body


async def test_message_fields_fold_but_content_parts_do_not(fake: FakeOllama) -> None:
    raw = '{"model":"m","messages":[{"role":"user","content":"a","CONTENT":"twelve bytes"}]}'
    status, data = await chat(fake, raw)
    assert status == 200
    assert data["usage"]["prompt_tokens"] == 3 + 4  # the CONTENT text, 12 bytes
    parts = '[{"type":"text","text":"abcd","TEXT":"much longer text here"}]'
    status, data = await chat(fake, f'{{"model":"m","messages":[{{"role":"user","content":{parts}}}]}}')
    assert status == 200
    assert data["usage"]["prompt_tokens"] == 1 + 4


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ('"stream":"yes"', "cannot unmarshal string into Go struct field ChatCompletionRequest.stream of type bool"),
        ('"max_tokens":2.0', "cannot unmarshal number 2.0 into Go struct field ChatCompletionRequest.max_tokens"),
        ('"max_tokens":1e2', "cannot unmarshal number"),
        ('"max_tokens":9223372036854775808', "cannot unmarshal number 9223372036854775808"),
        ('"stream_options":{"include_usage":"no"}', "StreamOptions.include_usage of type bool"),
        ('"messages":{}', "cannot unmarshal object"),
    ],
)
async def test_wrong_types_are_refused_as_go_does(fake: FakeOllama, field: str, message: str) -> None:
    status, data = await chat(fake, f'{{"model":"m","messages":{msgs()},{field}}}')
    assert status == 400
    assert data["error"]["type"] == "invalid_request_error"
    assert message in data["error"]["message"]
