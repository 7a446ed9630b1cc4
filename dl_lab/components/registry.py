"""Builders by name: one registry per concept, keyed by the names in config.choices.

The config layer owns the names (validation, help, the keys each option reads); a registry attaches
the code that builds each one. Registering a name the config does not know is an error, and
``missing()`` lists names without a builder (tests/test_registry.py keeps it empty). Modules that
register builders import torch lazily, so reading a registry stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from dl_lab.config.choices import Choices

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Entry(Generic[F]):
    name: str
    build: F
    help: str
    params: frozenset[str]
    meta: Mapping[str, Any] = field(default_factory=dict)  # facts other modules need (e.g. an activation's gain)


class Registry(Generic[F]):
    """The builders for one table of config choices, e.g. ``Registry(choices.ACTIVATIONS)``."""

    def __init__(self, choices: Choices) -> None:
        self.choices = choices
        self._entries: dict[str, Entry[F]] = {}

    def register(self, name: str, **meta: Any) -> Callable[[F], F]:
        """Decorator adding the builder for the config choice ``name``."""

        def add(fn: F) -> F:
            choice = self.choices[name]  # KeyError: a builder for a name the config does not know
            if name in self._entries:
                raise ValueError(f"duplicate {self.choices.kind} {name!r}")
            self._entries[name] = Entry(name, fn, choice.help, choice.params, dict(meta))
            return fn

        return add

    def missing(self) -> list[str]:
        """Config choices with no builder registered."""
        return [name for name in self.choices.names() if name not in self._entries]

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
            raise KeyError(self.choices.unknown_message(name)) from None
