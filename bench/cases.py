"""The load shapes of a run, as data: non-streaming at concurrency 1 and 64, a 20-chunk stream at 16 and 1.

With the zero-latency fake, a gateway at concurrency 16 is saturated, so a stream's time to first byte there
is mostly its wait behind the other fifteen (Little's law: concurrency / throughput); one stream at a time
shows what the gateway itself adds before the first byte. With a paced fake (`--chunk-interval`) nothing is
saturated, and the stream clients start spread over one stream's length (`--stagger`), as independent
users would: started together, they would stay in step and every first byte would meet fifteen others."""

from __future__ import annotations

import re
from dataclasses import dataclass

import orjson

PATH = "/v1/chat/completions"
# An SSE event whose delta carries text. Gateways may add events of their own (LiteLLM sends
# `finish_reason` in an extra empty one), so whole streams are checked by their content events.
_CONTENT = re.compile(rb'^data: \{.*"content": ?"[^"]', re.MULTILINE)


def content_events(stream: bytes) -> int:
    return len(_CONTENT.findall(stream))


@dataclass(frozen=True)
class Case:
    """One load shape. Plain requests go through wrk; streams through `bench.streamclient`."""

    name: str
    stream: bool
    concurrency: int

    def body(self, model: str) -> bytes:
        # A short prompt and a cap above the fake's answer length, so every answer has the configured chunks.
        payload: dict[str, object] = {
            "model": model,
            "messages": [{"role": "user", "content": "Say hello in one short sentence."}],
            "max_tokens": 256,
        }
        if self.stream:
            payload["stream"] = True
        return orjson.dumps(payload)


CASES: tuple[Case, ...] = (
    Case("chat-c1", stream=False, concurrency=1),
    Case("chat-c64", stream=False, concurrency=64),
    Case("stream-c16", stream=True, concurrency=16),
    Case("stream-c1", stream=True, concurrency=1),
)
