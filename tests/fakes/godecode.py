"""How Ollama reads a request body: Go's `encoding/json` decoding into the server's request structs.

The fake must act on what real Ollama would act on, quirks included, or it hides differences between what
the gateway checked and what the upstream does:

- an object key matches a struct field case-insensitively, with Go's Unicode simple case folding
  (`foldName` in encoding/json: ASCII letters fold to upper case, any other rune to the smallest rune of
  its fold orbit), so `Model`, `MODEL` and `ſtream` (U+017F) or `max_toKens` (U+212A) all match;
- every matching key is applied in order, so the last one wins; a pointer-to-struct or slice decodes *into*
  what an earlier key left (fields merge), and `null` leaves a non-pointer field as it was;
- keys of a `map[string]any` (the content parts of a message, native `options`) match exactly;
- numbers: an `int` field refuses a literal with a fraction or exponent and values beyond int64; numbers in
  an `any` become float64;
- a wrong JSON type for a field is an error (Ollama answers 400 with Go's message); unknown keys are ignored.

The structs are those of Ollama's `openai/openai.go` (ChatCompletionRequest, Message, StreamOptions,
EmbedRequest) and `api/types.go` (ChatRequest, Message) as far as the fake uses them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

_INT64 = (-(2**63), 2**63 - 1)
# The only non-ASCII runes whose fold orbit reaches an ASCII letter: ſ (long s) and K (Kelvin sign).
# U+0130 and U+0131 (dotted and dotless i) fold only to themselves in Go's caseOrbit table.
_NON_ASCII_FOLDS = {"\u017f": "S", "\u212a": "K"}


def fold(name: str) -> str:
    """Go's `foldName`: two keys match a field name when their folds are equal."""
    out = []
    for ch in name:
        if ch.isascii():
            out.append(ch.upper() if "a" <= ch <= "z" else ch)
        else:
            out.append(_NON_ASCII_FOLDS.get(ch, ch))
    return "".join(out)


class GoTypeError(ValueError):
    """What `json.Unmarshal` returns for a value of the wrong type (Ollama answers 400 with its text)."""


class _Pairs(list[tuple[str, Any]]):
    """A JSON object as its key/value pairs in order, duplicates kept."""


class _Float(float):
    """A JSON number written with a fraction or an exponent."""


@dataclass(frozen=True)
class GoType:
    kind: str  # string, bool, int, float, any, struct, slice
    pointer: bool = False
    name: str = ""
    fields: dict[str, GoType] = field(default_factory=dict)
    elem: GoType | None = None


STRING, BOOL, INT, ANY = GoType("string"), GoType("bool"), GoType("int"), GoType("any")
INT_PTR, FLOAT_PTR, BOOL_PTR, STRING_PTR = (
    GoType("int", True),
    GoType("float", True),
    GoType("bool", True),
    GoType("string", True),
)


def struct(go_name: str, pointer: bool = False, /, **fields: GoType) -> GoType:
    return GoType("struct", pointer, go_name, {k.removeprefix("f_"): v for k, v in fields.items()})


def slice_of(elem: GoType) -> GoType:
    return GoType("slice", elem=elem)


MESSAGE = struct(
    "Message", role=STRING, content=ANY, reasoning=STRING, tool_calls=ANY, name=STRING, tool_call_id=STRING
)
CHAT_COMPLETION_REQUEST = struct(
    "ChatCompletionRequest",
    model=STRING,
    messages=slice_of(MESSAGE),
    stream=BOOL,
    stream_options=struct("StreamOptions", True, include_usage=BOOL),
    max_tokens=INT_PTR,
    seed=INT_PTR,
    stop=ANY,
    temperature=FLOAT_PTR,
    frequency_penalty=FLOAT_PTR,
    presence_penalty=FLOAT_PTR,
    top_p=FLOAT_PTR,
    response_format=struct("ResponseFormat", True, type=STRING, json_schema=ANY),
    tools=ANY,
    reasoning=struct("Reasoning", True, effort=STRING),
    reasoning_effort=STRING_PTR,
    f__debug_render_only=BOOL,
)
EMBED_REQUEST = struct("EmbedRequest", input=ANY, model=STRING, dimensions=INT, encoding_format=STRING)
NATIVE_CHAT_REQUEST = struct(
    "ChatRequest",
    model=STRING,
    messages=slice_of(struct("Message", role=STRING, content=STRING, images=ANY, tool_calls=ANY, thinking=STRING)),
    stream=BOOL_PTR,
    format=ANY,
    keep_alive=ANY,
    tools=ANY,
    options=ANY,
    think=ANY,
)


def loads(raw: bytes) -> Any:
    """Parse JSON keeping every object's pairs in order (duplicates too) and how each number was written."""
    return json.loads(raw, object_pairs_hook=_Pairs, parse_float=_Float, parse_constant=_refuse_constant)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"invalid character '{name[0]}' looking for beginning of value")


def decode(value: Any, spec: GoType, current: Any = None, where: str = "") -> Any:
    """Decode one parsed JSON value into `spec` the way Go does, starting from the field's `current` value."""
    if value is None:
        return None if spec.pointer or spec.kind in ("slice", "any") else current
    kind = spec.kind
    if kind == "struct":
        if not isinstance(value, _Pairs):
            raise _mismatch(value, spec, where)
        out = dict(current) if isinstance(current, dict) else {}
        folded = {fold(k): k for k in spec.fields}
        for key, item in value:
            name = key if key in spec.fields else folded.get(fold(key))
            if name is not None:
                out[name] = decode(item, spec.fields[name], out.get(name), f"{spec.name}.{name}")
        return out
    if kind == "slice":
        if not isinstance(value, list) or isinstance(value, _Pairs):
            raise _mismatch(value, spec, where)
        assert spec.elem is not None
        old = current if isinstance(current, list) else []
        return [decode(v, spec.elem, old[i] if i < len(old) else None, where) for i, v in enumerate(value)]
    if kind == "any":
        return _plain(value)
    if kind == "string" and isinstance(value, str):
        return value
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind == "int" and isinstance(value, int) and not isinstance(value, (bool, _Float)):
        if not _INT64[0] <= value <= _INT64[1]:
            raise GoTypeError(f"json: cannot unmarshal number {value} into Go struct field {where} of type int")
        return value
    if kind == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise _mismatch(value, spec, where)


def _plain(value: Any) -> Any:
    """A value decoded into `any`: maps with exact keys (the last duplicate wins), numbers as float64."""
    if isinstance(value, _Pairs):
        return {k: _plain(v) for k, v in value}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value


def _mismatch(value: Any, spec: GoType, where: str) -> GoTypeError:
    if isinstance(value, _Pairs):
        got = "object"
    elif isinstance(value, list):
        got = "array"
    elif isinstance(value, bool):
        got = "bool"
    elif isinstance(value, (int, float)):
        got = f"number {value}"
    else:
        got = "string"
    go = {"struct": spec.name or "struct", "slice": "[]" + (spec.elem.name if spec.elem else "")}.get(
        spec.kind, spec.kind
    )
    target = f"Go struct field {where}" if where else "Go value"
    return GoTypeError(f"json: cannot unmarshal {got} into {target} of type {'*' if spec.pointer else ''}{go}")
