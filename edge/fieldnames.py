"""The request fields an upstream reads, and the check that a body spells each one exactly.

Ollama (and Ollama's cloud) decode a body with Go's `encoding/json`: an object key matches a struct field
case-insensitively under Go's Unicode simple case folding, and the last matching key wins. So `Model`,
`MAX_TOKENS`, `ſtream` (long s) or `max_toKens` (Kelvin sign) all reach the fields `model`, `max_tokens` and
`stream`, while the gateway reads keys exactly. A body that spells a field the upstream knows in any other
way than exactly is refused (400 `ambiguous_parameter`), and the gateway re-serialises what it validated, so
duplicate exact keys (orjson keeps the last) reach the upstream once. What the upstream acts on is then
what the gateway checked, held for and logs.
"""

from __future__ import annotations

from typing import Any

from edge.errors import BadRequest

# The only non-ASCII runes whose fold orbit reaches an ASCII letter: ſ (U+017F) and K (U+212A).
_NON_ASCII_FOLDS = {"\u017f": "S", "\u212a": "K"}


def go_fold(name: str) -> str:
    """Go's `foldName`: two keys reach the same struct field when their folds are equal."""
    return "".join((ch.upper() if ch.isascii() else _NON_ASCII_FOLDS.get(ch, ch)) for ch in name)


def _folds(*names: str) -> tuple[frozenset[str], dict[str, str]]:
    return frozenset(names), {go_fold(n): n for n in names}


# Ollama's openai.ChatCompletionRequest, plus the `max_completion_tokens` the gateway reads itself.
CHAT = _folds(
    "model",
    "messages",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "seed",
    "stop",
    "temperature",
    "frequency_penalty",
    "presence_penalty",
    "top_p",
    "response_format",
    "tools",
    "reasoning",
    "reasoning_effort",
    "_debug_render_only",
)
MESSAGE = _folds("role", "content", "reasoning", "tool_calls", "name", "tool_call_id")
STREAM_OPTIONS = _folds("include_usage")
EMBEDDINGS = _folds("input", "model", "dimensions", "encoding_format")


def check_spelling(obj: dict[str, Any], fields: tuple[frozenset[str], dict[str, str]], where: str = "") -> None:
    """Refuse a key that is not one of `fields` but reaches one of them under Go's folding."""
    exact, folded = fields
    for key in obj:
        # Field names are lower-case ASCII: a lower-case ASCII key reaches one only by being it.
        if key in exact or (key.isascii() and key.islower()):
            continue
        name = folded.get(go_fold(key))
        if name is not None:
            param = f"{where}{key}"
            raise BadRequest(
                f"`{param}` is another spelling of `{where}{name}`; send each parameter once, spelled exactly.",
                code="ambiguous_parameter",
                param=param,
            )
