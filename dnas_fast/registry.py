"""One name -> object table with the same rules for ops, spaces, strategies and backends: a name is registered
once (a second registration is an error, so two modules cannot silently replace each other), and an unknown name
is a ValueError that lists the known ones."""

from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, plural: str | None = None):
        self.kind, self.plural = kind, plural or kind + "s"  # what the entries are, for messages
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def __getitem__(self, name: str) -> T:
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; known {self.plural}: {', '.join(self.names())}")
        return self._entries[name]

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[T]:
        return iter(self._entries.values())

    def names(self) -> list[str]:
        return sorted(self._entries)
