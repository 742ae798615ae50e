"""A name -> object registry with listing, wildcards and "did you mean" on a typo.

It lives in ``datasets`` because that package may not import ``trainers``, while
``trainers`` may import ``datasets``: both registries use this one class.
"""
from __future__ import annotations

import difflib
import fnmatch
from typing import Any, Callable, Dict, List, Optional


class Registry:
    """Maps names (case-sensitive, as Dassl) to classes or functions."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: Dict[str, Any] = {}
        self._aliases: Dict[str, str] = {}

    def register(self, obj: Any = None, *, name: Optional[str] = None,
                 aliases: tuple = (), force: bool = False) -> Any:
        """Register ``obj`` under its ``__name__`` (or ``name``); usable as a decorator."""
        def do_register(target: Any) -> Any:
            key = name or target.__name__
            if not force and (key in self._entries or key in self._aliases):
                raise KeyError(f'{self.kind} "{key}" is already registered')
            self._entries[key] = target
            for alias in aliases:
                if not force and (alias in self._entries or alias in self._aliases):
                    raise KeyError(f'{self.kind} alias "{alias}" is already registered')
                self._aliases[alias] = key
            return target

        if obj is None:
            return do_register
        return do_register(obj)

    def resolve(self, name: str) -> str:
        """The registered name behind ``name`` (which may be an alias)."""
        if name in self._entries:
            return name
        if name in self._aliases:
            return self._aliases[name]
        known = sorted(self._entries) + sorted(self._aliases)
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.0)
        hint = f' Did you mean "{close[0]}"?' if close else ""
        raise KeyError(f'Unknown {self.kind} "{name}".{hint} Registered: {", ".join(sorted(self._entries))}')

    def get(self, name: str) -> Any:
        return self._entries[self.resolve(name)]

    def __contains__(self, name: str) -> bool:
        return name in self._entries or name in self._aliases

    def names(self, pattern: str = "*") -> List[str]:
        """Registered names (aliases excluded) matching a shell-style wildcard."""
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def items(self):
        return self._entries.items()

    def aliases(self) -> Dict[str, str]:
        return dict(self._aliases)


def call_all(registry: Registry, method: str, *args: Any) -> None:
    """Call ``method`` on every registered object that defines it."""
    for _, obj in registry.items():
        fn: Optional[Callable] = getattr(obj, method, None)
        if fn is not None:
            fn(*args)
