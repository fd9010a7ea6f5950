"""The typed key of a service and the error for one nobody provides."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Service(Generic[T]):
    """The typed key of one service. `default` answers when no plugin provides it (None: no default)."""

    __slots__ = ("default", "name")

    def __init__(self, name: str, *, default: T | None = None) -> None:
        self.name = name
        self.default = default

    def __repr__(self) -> str:
        return f"Service({self.name!r})"


class MissingService(LookupError):
    """Asked for a service no enabled plugin provides (and that has no core default)."""

    def __init__(self, key: Service[Any]) -> None:
        super().__init__(f"no enabled plugin provides the {key.name!r} service")
        self.key = key
