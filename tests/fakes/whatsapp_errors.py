"""The WhatsApp error codes the fake WhatsApp provider can answer, as the Cloud API reports them.

Each code has the HTTP status the Graph API answers it with, its title (which the Graph API puts in the
message, `(#131056) (Business Account, Consumer Account) pair rate limit hit`) and the `type` of the
error envelope. A code here can be answered synchronously (`FakeSettings.fail_next`) or, for the ones
WhatsApp reports only after accepting the message (131026 and 131050 most often), through a `failed`
status webhook (`FakeSettings.undeliverable`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ErrorCode:
    code: int
    status: int
    title: str
    type: str = "OAuthException"
    subcode: int | None = None


CODES: dict[int, ErrorCode] = {
    e.code: e
    for e in (
        ErrorCode(100, 400, "Invalid parameter"),
        ErrorCode(190, 401, "Error validating access token: Session has expired", subcode=463),
        ErrorCode(368, 403, "Temporarily blocked for policies violations"),
        ErrorCode(130429, 429, "Rate limit hit"),
        ErrorCode(131000, 500, "Something went wrong"),
        ErrorCode(131016, 503, "Service unavailable"),
        ErrorCode(131026, 400, "Message undeliverable"),
        ErrorCode(131031, 403, "Account has been locked"),
        ErrorCode(131047, 400, "Re-engagement message"),
        ErrorCode(131050, 400, "User has stopped receiving marketing messages"),
        ErrorCode(131056, 400, "(Business Account, Consumer Account) pair rate limit hit"),
        ErrorCode(132000, 400, "Number of parameters does not match the expected number of params"),
        ErrorCode(132001, 404, "Template name does not exist in the translation"),
        ErrorCode(132005, 400, "Translated text too long"),
        ErrorCode(132018, 400, "There was an issue with the parameters in your template"),
    )
}


def graph_error(code: int, detail: str, *, trace: str) -> tuple[int, dict[str, object]]:
    """(HTTP status, body) of the Graph API's error envelope for `code`."""
    known = CODES[code]
    error: dict[str, object] = {
        "message": f"(#{code}) {known.title}",
        "type": known.type,
        "code": code,
        "error_data": {"messaging_product": "whatsapp", "details": detail},
        "fbtrace_id": trace,
    }
    if known.subcode is not None:
        error["error_subcode"] = known.subcode
    return known.status, {"error": error}


def resayil_error(code: int, detail: str) -> tuple[int, dict[str, object]]:
    """(HTTP status, body) of the Resayil gateway's error. Its error shape is not documented anywhere; the
    fake assumes it passes WhatsApp's code through with the same HTTP status, under `success: false`."""
    known = CODES[code]
    status = 429 if code in {130429, 131056} else known.status
    return status, {"success": False, "error": {"code": code, "message": f"{known.title}: {detail}"}}
