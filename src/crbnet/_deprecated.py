"""Deprecated module names kept working: a module that moved forwards each name to its new home
and warns (:class:`DeprecationWarning`) on every use, naming the new path.

A deprecated module holds only ``__getattr__`` and ``__dir__`` made by :func:`forwarding`
(PEP 562), so importing it costs nothing and nothing of it is imported before it is used.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Callable, Mapping


def warn(old: str, name: str, new: str) -> None:
    """Warn that ``old.name`` is deprecated in favour of ``new`` (attributed to the caller's
    caller: the line that used the old name)."""
    warnings.warn(f"{old}.{name} is deprecated; use {new}", DeprecationWarning, stacklevel=3)


def forwarding(old: str, new: str | Mapping[str, str],
               computed: Mapping[str, tuple[Callable[[], object], str]] | None = None
               ) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for the deprecated module ``old``.

    ``new`` is the module that now holds every public name of ``old`` (its ``__all__``), or
    ``{name: module}`` for names that went to different modules; ``computed`` gives names with
    no new home as ``{name: (function making the value, what to use instead)}``.
    ``from old import *`` works too (``__all__`` is forwarded, with a warning)."""
    computed = dict(computed or {})

    def home(name: str) -> str | None:
        return new if isinstance(new, str) else new.get(name)

    def names() -> list[str]:
        if isinstance(new, str):
            return list(importlib.import_module(new).__all__) + list(computed)
        return list(new) + list(computed)

    def __getattr__(name: str) -> object:
        if name == "__all__":
            warn(old, "*", new if isinstance(new, str) else "the modules its names moved to")
            return names()
        if name in computed:
            make, instead = computed[name]
            warn(old, name, instead)
            return make()
        module = home(name)
        if name.startswith("__") or module is None or name not in names():
            raise AttributeError(f"module {old!r} has no attribute {name!r}")
        warn(old, name, f"{module}.{name}")
        return getattr(importlib.import_module(module), name)

    def __dir__() -> list[str]:
        return sorted(names())

    return __getattr__, __dir__
