"""A name -> object registry with listing, wildcards and "did you mean" on a typo.

It lives in ``datasets`` because that package may not import ``trainers``, while
``trainers`` may import ``datasets``: both registries use this one class.
"""
from __future__ import annotations

import difflib
import fnmatch
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

#: ``resolver(name)`` -> the object for ``name``, or None when the name is not its kind
Resolver = Callable[[str], Any]


class Registry:
    """Maps names (case-sensitive, as Dassl) to classes or functions.

    Besides fixed entries, resolvers may supply objects for whole families of names on
    first lookup (e.g. ``ExtrasLinearProbe<Trainer>`` for every registered trainer, including
    ones registered after the resolver); what they return is registered under that name.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: Dict[str, Any] = {}
        self._aliases: Dict[str, str] = {}
        self._resolvers: List[Tuple[Resolver, Optional[Callable[[], Iterable[str]]]]] = []

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

    def add_resolver(self, resolver: Resolver, names: Optional[Callable[[], Iterable[str]]] = None) -> None:
        """Let ``resolver`` supply objects for unregistered names; ``names()`` lists what it can supply.

        A resolver returns None for names it does not handle, and raises KeyError (with the
        reason) for names it handles but cannot build.
        """
        self._resolvers.append((resolver, names))

    def _dynamic_names(self) -> List[str]:
        return sorted({n for _, listing in self._resolvers if listing is not None for n in listing()}
                      - set(self._entries) - set(self._aliases))

    def resolve(self, name: str) -> str:
        """The registered name behind ``name`` (which may be an alias or a name a resolver supplies)."""
        if name in self._entries:
            return name
        if name in self._aliases:
            return self._aliases[name]
        for resolver, _ in self._resolvers:
            obj = resolver(name)
            if obj is not None:
                self.register(obj, name=name)
                return name
        known = sorted(self._entries) + sorted(self._aliases) + self._dynamic_names()
        same_letters = [k for k in known if k.lower() == name.lower()]
        close = same_letters or difflib.get_close_matches(name, known, n=1, cutoff=0.0)
        hint = f' Did you mean "{close[0]}"?' if close else ""
        listed = sorted(set(self._entries) | set(self._dynamic_names()))
        raise KeyError(f'Unknown {self.kind} "{name}".{hint} Registered: {", ".join(listed)}')

    def get(self, name: str) -> Any:
        return self._entries[self.resolve(name)]

    def __contains__(self, name: str) -> bool:
        try:
            self.resolve(name)
        except KeyError:
            return False
        return True

    def names(self, pattern: str = "*") -> List[str]:
        """Registered names and those resolvers can supply (aliases excluded) matching a shell-style wildcard."""
        return sorted(n for n in list(self._entries) + self._dynamic_names() if fnmatch.fnmatchcase(n, pattern))

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
