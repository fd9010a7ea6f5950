"""Small pure-ASGI helpers for the /v1 hot path: reading a bounded body and sending responses."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from edge.errors import BadRequest, GatewayError, PayloadTooLarge

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON = b"application/json"


class ClientGone(Exception):
    """The client closed the connection."""


async def read_body(receive: Receive, *, limit: int, content_length: str | None) -> bytes:
    """The whole request body, refusing more than `limit` bytes before reading them when announced."""
    if content_length is not None:
        if not content_length.isdigit():
            raise BadRequest("The Content-Length header is not a number.", code="invalid_content_length")
        if int(content_length) > limit:
            raise too_large(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise too_large(limit)
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The request body is larger than the limit of {limit} bytes.")


def header_list(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]


async def send_bytes(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]], content_type: bytes = JSON
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def send_json(send: Send, status: int, data: Any, headers: list[tuple[bytes, bytes]]) -> None:
    await send_bytes(send, status, orjson.dumps(data), headers)


async def send_error(send: Send, error: GatewayError, headers: list[tuple[bytes, bytes]]) -> None:
    await send_bytes(send, error.status, error.body_bytes(), [*headers, *error.response_headers()])
