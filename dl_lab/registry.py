"""Name -> implementation tables, one per concept (activations, initializers, optimizers, datasets).

Validation, `dllab options` and the docs all read these tables, so adding an option is one entry.
Entries are plain functions; modules that define them import torch lazily so that reading the
names (for `--help` or config validation) stays cheap.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, Mapping, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Entry(Generic[F]):
    name: str
    build: F
    help: str
    params: frozenset[str] = field(default_factory=frozenset)
    meta: Mapping[str, Any] = field(default_factory=dict)  # facts other modules need (e.g. an activation's gain)


class Registry(Generic[F]):
    """An ordered table of named entries for one concept, e.g. ``Registry("activation")``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[F]] = {}

    def register(self, name: str, help: str, params: tuple[str, ...] = (), **meta: Any) -> Callable[[F], F]:
        """Decorator adding ``fn`` under ``name``; ``params`` lists the config keys it reads."""

        def add(fn: F) -> F:
            if name in self._entries:
                raise ValueError(f"duplicate {self.kind} {name!r}")
            self._entries[name] = Entry(name, fn, help, frozenset(params), dict(meta))
            return fn

        return add

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[F]]:
        return iter(self._entries.values())

    def __getitem__(self, name: str) -> Entry[F]:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(self.unknown_message(name)) from None

    def unknown_message(self, name: object) -> str:
        """'unknown activation 'rleu' (did you mean 'relu'?); allowed: ...'."""
        return f"unknown {self.kind} {name!r}{did_you_mean(str(name), self.names())}; allowed: {', '.join(self.names())}"


def did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
