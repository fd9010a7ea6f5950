"""Typed gateway errors and the one renderer that turns them into OpenAI's error shape.

`GatewayError.body` is the only place an error body is built: /v1 answers (`edge.asgi.send_error`), the
error event that ends a failed stream (`edge.sse.error_event`) and every /api answer (`edge.app.api_error`,
the 422 of `edge.inputs.invalid` included) are that body, so a client sees one shape everywhere.
"""

from __future__ import annotations

from typing import Any

import orjson

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "server_error",
    503: "server_error",
    504: "server_error",
}


def error_type_for(status: int) -> str:
    return _TYPE_BY_STATUS.get(status, "server_error" if status >= 500 else "invalid_request_error")


class GatewayError(Exception):
    """An error a client sees. Plugins veto a request by raising one (or a subclass)."""

    status = 500
    code: str | None = "server_error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        param: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.param = param
        self.type = type or error_type_for(self.status)
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    def body(self) -> dict[str, Any]:
        """`{"error": {"message", "type", "param", "code", ...extra}}`, as OpenAI answers."""
        error: dict[str, Any] = {
            "message": self.message,
            "type": self.type,
            "param": self.param,
            "code": self.code,
        }
        error.update(self.extra)
        return {"error": error}

    def body_bytes(self) -> bytes:
        return orjson.dumps(self.body())

    def response_headers(self) -> list[tuple[bytes, bytes]]:
        headers = {k.lower(): v for k, v in self.headers.items()}
        if self.status < 500 and self.status != 429 and "x-should-retry" not in headers:
            headers["x-should-retry"] = "false"
        return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]


class BadRequest(GatewayError):
    status = 400
    code = "invalid_request"


class Unauthorized(GatewayError):
    status = 401
    code = "invalid_api_key"


class PaymentRequired(GatewayError):
    status = 402
    code = "insufficient_quota"


class Forbidden(GatewayError):
    status = 403
    code = "permission_denied"


class NotFound(GatewayError):
    status = 404
    code = "not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    code = "method_not_allowed"


class PayloadTooLarge(GatewayError):
    status = 413
    code = "request_too_large"


class Unprocessable(GatewayError):
    status = 422
    code = "invalid_fields"


class TooManyRequests(GatewayError):
    status = 429
    code = "rate_limit_exceeded"


class BadGateway(GatewayError):
    status = 502
    code = "upstream_error"


class ServiceUnavailable(GatewayError):
    status = 503
    code = "service_unavailable"


class GatewayTimeout(GatewayError):
    status = 504
    code = "upstream_timeout"


def model_not_found(name: str) -> NotFound:
    return NotFound(
        f"The model `{name}` does not exist or you do not have access to it.",
        code="model_not_found",
        param="model",
    )


class UpstreamFailure(GatewayError):
    """The upstream failed before the gateway sent anything; `retryable` when another try may work, `reached`
    False when no connection could even be opened (so the request's input cannot have caused it)."""

    status = 502
    code = "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = False,
        upstream: str | None = None,
        reached: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(message, **kwargs)
        self.retryable = retryable
        self.upstream = upstream
        self.reached = reached
