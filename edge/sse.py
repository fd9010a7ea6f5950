"""Server-sent events from an OpenAI-compatible upstream: split, inspect and re-emit one event at a time."""

from __future__ import annotations

import logging
from typing import Any

import orjson

from edge import usage as usage_rules
from edge.context import Usage
from edge.errors import BadGateway, GatewayError

DONE = b"data: [DONE]\n\n"
# An upstream that sends this much without ending an event is not sending server-sent events.
MAX_EVENT_BYTES = 1 << 20
log = logging.getLogger("resayil.upstream")


def event(data: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


def error_event(error: GatewayError) -> bytes:
    """The last event of a stream that failed after it began: the gateway's error body, as OpenAI sends it."""
    return event(error.body())


def malformed(message: str = "The model server sent a malformed answer; please try again.") -> BadGateway:
    return BadGateway(message, code="upstream_error")


class StreamRelay:
    """Feeds upstream bytes in, gives bytes to send to the client out, and keeps count as it goes.

    It strips the usage chunk when the client did not ask for it (the gateway always asks upstream),
    records usage, counts content chunks relayed (the billing rule for cut streams), and turns an
    upstream's in-stream error or a malformed event into the gateway's error.
    """

    __slots__ = ("_buf", "content_chunks", "done", "error", "keep_usage", "request_id", "usage")

    def __init__(self, *, keep_usage: bool, request_id: str = "") -> None:
        self._buf = b""
        self.keep_usage = keep_usage
        self.request_id = request_id
        self.usage: Usage | None = None
        self.content_chunks = 0
        self.done = False
        self.error: GatewayError | None = None

    def feed(self, data: bytes) -> tuple[bytes, int]:
        """Return (bytes to send now, content chunks among them)."""
        buf = self._buf + data
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        out: list[bytes] = []
        chunks = 0
        while True:
            end = buf.find(b"\n\n")
            if end < 0:
                break
            raw = buf[: end + 2]
            buf = buf[end + 2 :]
            keep, counted = self._inspect(raw)
            if keep is not None:
                out.append(keep)
                chunks += counted
        if len(buf) > MAX_EVENT_BYTES and self.error is None and not self.done:
            self._fail("an event longer than the limit", buf[:200])
            buf = b""
        self._buf = buf
        return b"".join(out), chunks

    def _fail(self, what: str, detail: Any) -> None:
        log.warning(
            "upstream stream: %s", what, extra={"fields": {"request_id": self.request_id, "detail": str(detail)[:500]}}
        )
        self.error = malformed()

    def _inspect(self, raw: bytes) -> tuple[bytes | None, int]:
        if self.done or self.error is not None:
            return None, 0
        data = _data_of(raw)
        if data is None:
            return raw, 0  # comments and keep-alives pass through
        if data == b"[DONE]":
            self.done = True
            return DONE, 0
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            self._fail("an event that is not JSON", data[:200])
            return None, 0
        if not isinstance(obj, dict):
            self._fail("an event that is not a JSON object", data[:200])
            return None, 0
        if "error" in obj:
            log.warning(
                "upstream failed during a stream",
                extra={"fields": {"request_id": self.request_id, "detail": str(obj["error"])[:500]}},
            )
            self.error = BadGateway(
                "The model server failed during the answer; please try again.", code="upstream_error"
            )
            return None, 0
        usage = usage_rules.from_upstream(obj.get("usage"))
        if usage is not None:
            self.usage = usage
        choices = obj.get("choices")
        if choices is None or choices == []:
            return (raw if self.keep_usage else None), 0
        if not isinstance(choices, list) or not isinstance(choices[0], dict):
            self._fail("an event with malformed choices", data[:200])
            return None, 0
        delta = choices[0].get("delta")
        counted = (
            1
            if isinstance(delta, dict) and (delta.get("content") or delta.get("tool_calls") or delta.get("reasoning"))
            else 0
        )
        return raw, counted


def _data_of(raw: bytes) -> bytes | None:
    """The `data:` payload of one event (lines joined), or None when the event has none."""
    if raw.startswith(b"data: ") and raw.count(b"\n") == 2:
        return raw[6:-2]
    parts = [line[5:].lstrip(b" ") for line in raw.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(parts) if parts else None
