"""Reading the gateway's one /api error shape in tests (edge/inputs.py, docs/plugins.md)."""

from __future__ import annotations

from typing import Any

ERROR_KEYS = {"message", "type", "param", "code"}


def field_codes(body: dict[str, Any]) -> dict[str, str]:
    """`{field: code}` of a 422, after checking every field carries a code and a message."""
    fields = body["error"]["fields"]
    assert all(set(detail) == {"code", "message"} for detail in fields.values()), fields
    assert all(isinstance(d["code"], str) and isinstance(d["message"], str) for d in fields.values()), fields
    return {name: detail["code"] for name, detail in fields.items()}


def assert_one_shape(body: Any, *, status: int) -> None:
    """`body` is the one error shape: `{"error": {message, type, param, code[, fields]}}` and nothing else."""
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    extra = set(error) - ERROR_KEYS
    assert set(error) >= ERROR_KEYS, body
    assert isinstance(error["message"], str) and error["message"], body
    assert isinstance(error["code"], str) and error["code"], body
    assert error["type"] == ("invalid_request_error" if status < 500 else "server_error") or status in (
        401,
        402,
        403,
        429,
    )
    if status == 422:
        assert extra == {"fields"}, body
        codes = field_codes(body)
        if codes:
            assert error["param"] == next(iter(codes)) and error["code"] == codes[error["param"]], body
        else:
            assert (error["param"], error["code"]) == (None, "invalid_json"), body
    else:
        assert "fields" not in extra, body
