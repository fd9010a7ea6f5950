"""Server-sent events from an OpenAI-compatible upstream: split, inspect and re-emit one event at a time."""

from __future__ import annotations

from typing import Any

import orjson

from edge.context import Usage

DONE = b"data: [DONE]\n\n"


def event(data: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


class StreamRelay:
    """Feeds upstream bytes in, gives bytes to send to the client out, and keeps count as it goes.

    It strips the usage chunk when the client did not ask for it (the gateway always asks upstream),
    records usage, counts content chunks relayed (the billing rule for cut streams), and turns an
    upstream's in-stream error into the gateway's error event.
    """

    __slots__ = ("_buf", "content_chunks", "done", "error", "keep_usage", "usage")

    def __init__(self, *, keep_usage: bool) -> None:
        self._buf = b""
        self.keep_usage = keep_usage
        self.usage: Usage | None = None
        self.content_chunks = 0
        self.done = False
        self.error: dict[str, Any] | None = None

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
        self._buf = buf
        return b"".join(out), chunks

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
            self.error = {
                "message": "The upstream sent a malformed event.",
                "type": "server_error",
                "param": None,
                "code": "upstream_error",
            }
            return None, 0
        if not isinstance(obj, dict):
            return raw, 0
        if "error" in obj:
            self.error = upstream_stream_error(obj["error"])
            return None, 0
        usage = obj.get("usage")
        if isinstance(usage, dict):
            self.usage = Usage(
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or 0),
                source="upstream",
            )
        choices = obj.get("choices")
        if not choices:
            return (raw if self.keep_usage else None), 0
        delta = choices[0].get("delta") if isinstance(choices[0], dict) else None
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


def upstream_stream_error(error: Any) -> dict[str, Any]:
    message = error.get("message") if isinstance(error, dict) else error
    return {
        "message": f"The upstream failed during the stream: {str(message)[:300]}",
        "type": "server_error",
        "param": None,
        "code": "upstream_error",
    }
