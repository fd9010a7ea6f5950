"""What travels down the hook chain: the principal, the request context and its usage."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, TypeVar

from edge.config import ModelSettings, UpstreamSettings

F = TypeVar("F")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling and who pays: set by the first `authenticate` implementation that answers.

    Identity facts a plugin adds (the teams plugin: the caller's team and role in it) are values of the
    plugin's own frozen dataclasses, kept by their type, so the core never changes for a new kind of fact:

        ctx.principal = ctx.principal.with_fact(TeamMembership(team_id=7, role="owner"))   # in authorize
        membership = ctx.principal.fact(TeamMembership)   # in a later hook: the value, or None

    A principal without facts carries the empty tuple (no allocation on the hot path); `fact` scans the
    few there are. `with_fact` returns a new principal, so a principal cached across requests is never
    changed by one request's facts.
    """

    account_id: int | None
    user_id: int | None = None
    tier: str = "basic"
    key_id: int | None = None
    scopes: frozenset[str] = frozenset({"read", "write", "delete"})
    role: str = "user"
    locale: str = "ar"
    plan_expires_at: int | None = None
    facts: tuple[object, ...] = ()

    def fact(self, kind: type[F]) -> F | None:
        """The fact of exactly this type, or None."""
        for value in self.facts:
            if type(value) is kind:
                return value
        return None

    def with_fact(self, value: object) -> Principal:
        """This principal with `value` as its fact of `type(value)` (replacing one of the same type)."""
        kind = type(value)
        kept = tuple(other for other in self.facts if type(other) is not kind)
        return dataclasses.replace(self, facts=(*kept, value))


@dataclass(frozen=True, slots=True)
class Upstream:
    """A configured upstream, OpenAI-compatible at `base_url`."""

    name: str
    settings: UpstreamSettings

    @property
    def kind(self) -> str:
        return self.settings.kind


@dataclass(frozen=True, slots=True)
class Model:
    """A catalogue entry: the public name a client sends, and where it runs."""

    name: str
    upstream: Upstream
    settings: ModelSettings

    @property
    def kind(self) -> str:
        return "embedding" if self.settings.model_class == "embedding" else "chat"

    @property
    def upstream_model(self) -> str:
        return self.settings.upstream_model or self.name

    @property
    def multiplier(self) -> int:
        if self.settings.multiplier is not None:
            return self.settings.multiplier
        return self.upstream.settings.route_multiplier


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # "upstream" when the upstream reported it, "estimated" when a cut stream was counted, "none" otherwise.
    source: str = "none"

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(slots=True)
class RequestContext:
    """One /v1 request as the chain sees it. Plugins keep their own per-request state in `extras`."""

    request_id: str
    method: str
    path: str
    endpoint: str
    headers: dict[str, str]
    client_ip: str
    started: float
    body: bytes = b""
    payload: dict[str, Any] = field(default_factory=dict)
    model_name: str | None = None
    stream: bool = False
    # Whether the client asked for a stream's usage chunk (`stream_options.include_usage`).
    include_usage: bool = False
    # The completion budget the client asked for (None: the model's default cap applies).
    max_tokens: int | None = None
    principal: Principal | None = None
    model: Model | None = None
    # Set by `route`: where the request goes, which model name upstream, and the route label for billing.
    upstream: Upstream | None = None
    upstream_model: str | None = None
    route: str = "local"
    multiplier: int = 1
    response_headers: dict[str, str] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
    usage: Usage = field(default_factory=Usage)
    # Filled while the response runs, read by `settle`.
    status: int = 0
    outcome: str = "pending"
    error_code: str | None = None
    delivered_chunks: int = 0
    first_byte_at: float | None = None
    finished_at: float | None = None
    # The request went to an upstream, which may be working on it.
    sent_upstream: bool = False
    # (phase, perf_counter when it ended), in order: what the `server-timing` header and the log report.
    marks: list[tuple[str, float]] = field(default_factory=list)

    def mark(self, phase: str) -> None:
        """Note that `phase` of the request (`read`, `auth`, `authorize`, `upstream`...) ended now."""
        self.marks.append((phase, time.perf_counter()))

    def set_payload(self, key: str, value: Any) -> None:
        """Change the body sent upstream (always re-serialised from `payload` before forwarding)."""
        self.payload[key] = value

    @property
    def prompt_bound(self) -> int:
        """An upper bound of the prompt's tokens: the UTF-8 bytes of the raw request body.

        Byte-level BPE tokenizers (Llama 3, Qwen, DeepSeek) never make a text token shorter than one byte,
        and the JSON around each message (`{"role":"user","content":""}`, 28 bytes) outweighs the few
        template tokens a chat template adds per message, so the body's length bounds the prompt.
        """
        return len(self.body)

    @property
    def completion_budget(self) -> int:
        """The completion tokens this request may produce: the client's cap or the model's default."""
        if self.max_tokens is not None:
            return self.max_tokens
        return self.model.settings.max_completion_tokens if self.model else 0
