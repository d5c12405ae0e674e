"""A small generic registry: exact names plus fnmatch patterns, typed metadata, aliases (docs/architecture.md)."""

from __future__ import annotations

import builtins
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from oodml.errors import OodmlError, suggest


class HasName(Protocol):
    """Registry metadata: anything with a `name` and a one-line `description`."""

    @property
    def name(self) -> str: ...

    @property
    def description(self) -> str: ...


InfoT = TypeVar("InfoT", bound=HasName)
F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Entry(Generic[InfoT]):
    """One registered item: its metadata and the factory that builds it."""

    info: InfoT
    factory: Callable[..., Any]


@dataclass
class Registry(Generic[InfoT]):
    """Name -> (info, factory). Registering a name twice is an error; renamed items keep an alias."""

    kind: str
    _entries: dict[str, Entry[InfoT]] = field(default_factory=dict)
    _aliases: dict[str, str] = field(default_factory=dict)

    def register(self, info: InfoT) -> Callable[[F], F]:
        """Decorator: register `factory` under `info.name`."""

        def deco(factory: F) -> F:
            self.add(info, factory)
            return factory

        return deco

    def add(self, info: InfoT, factory: Callable[..., Any]) -> None:
        """Register `factory` under `info.name`; raises ValueError when the name is taken."""
        if info.name in self._entries or info.name in self._aliases:
            raise ValueError(f"{self.kind} {info.name!r} is registered twice")
        self._entries[info.name] = Entry(info, factory)

    def alias(self, old: str, new: str) -> None:
        """Make `old` resolve to the registered name `new`."""
        if new not in self._entries:
            raise ValueError(f"alias target {new!r} is not a registered {self.kind}")
        if old in self._entries or old in self._aliases:
            raise ValueError(f"{self.kind} {old!r} is registered twice")
        self._aliases[old] = new

    def resolve(self, name: str) -> str:
        """The canonical name for `name` (an alias resolves to its target); OodmlError with suggestions if unknown."""
        if name in self._entries:
            return name
        if name in self._aliases:
            return self._aliases[name]
        raise OodmlError(
            f"unknown {self.kind} {name!r}{suggest(name, self.names(include_aliases=True))}; "
            f"`oodml list {self.kind}s` shows all"
        )

    def get(self, name: str) -> Entry[InfoT]:
        """The entry registered under `name` (or its alias)."""
        return self._entries[self.resolve(name)]

    def info(self, name: str) -> InfoT:
        """Metadata of `name`."""
        return self.get(name).info

    def entries(self) -> builtins.list[Entry[InfoT]]:
        """Every entry, in registration order."""
        return list(self._entries.values())

    def names(self, include_aliases: bool = False) -> builtins.list[str]:
        """All registered names, sorted."""
        names = list(self._entries)
        if include_aliases:
            names += list(self._aliases)
        return sorted(names)

    def aliases(self) -> dict[str, str]:
        """Alias -> registered name, sorted by alias."""
        return dict(sorted(self._aliases.items()))

    def list(self, pattern: str = "*") -> builtins.list[str]:
        """Registered names matching an fnmatch `pattern`, sorted (aliases excluded)."""
        return [n for n in self.names() if fnmatch.fnmatchcase(n, pattern)]

    def match(self, patterns: str | builtins.list[str]) -> builtins.list[str]:
        """Expand comma-separated names/patterns into canonical names, in the given order, without repeats.

        An exact name or alias must exist; a pattern (with *, ?, [) must match at least one name.
        """
        items = patterns.split(",") if isinstance(patterns, str) else list(patterns)
        out: builtins.list[str] = []
        for raw in items:
            item = raw.strip()
            if not item:
                raise OodmlError(f"empty {self.kind} name in {patterns!r}; separate names with single commas")
            if any(c in item for c in "*?["):
                found = self.list(item)
                if not found:
                    raise OodmlError(
                        f"pattern {item!r} matches no {self.kind}; `oodml list {self.kind}s` shows all"
                    )
            else:
                found = [self.resolve(item)]
            out += [f for f in found if f not in out]
        return out

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._aliases

    def __len__(self) -> int:
        return len(self._entries)
