"""One plugin mechanism for crbnet's four extension points: signal models, losses, estimators
and sequence kinds.

Each extension point is an :class:`ExtensionPoint`: a live view of its built-in registry and an
entry-point group. A name given on the command line or to the Python API is looked up, in this
order:

1. the registry (the built-ins and whatever was registered since, e.g. by
   ``losses.register``);
2. installed plugins: entry points in the group (``crbnet.models``, ``crbnet.losses``,
   ``crbnet.estimators``, ``crbnet.sequences``) whose name is the name asked for
   (``[project.entry-points."crbnet.losses"]`` in the plugin's pyproject.toml);
3. ``FILE.py:NAME`` — an object in a Python file (path absolute or relative to the working
   directory), imported once per absolute path;
4. ``package.module:NAME`` — an object in an importable module.

What the loaded object must be, and how it becomes a registry entry, is the extension point's
``adopt`` function (a model class, a loss function or :class:`~crbnet.learning.losses.Loss`, an
estimator class or factory, a sequence dataclass). Every failure is one line in the extension
point's error class (an :class:`~crbnet.errors.InputError`). docs/models.md shows all four.

This module imports nothing of crbnet but its errors, so that every layer may use it.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Generic, Mapping, TypeVar

from crbnet.errors import InputError

Entry = TypeVar("Entry")

#: Entry-point groups of the four extension points.
GROUPS = {"model": "crbnet.models", "loss": "crbnet.losses", "estimator": "crbnet.estimators",
          "sequence kind": "crbnet.sequences"}


def is_spec(text: str) -> bool:
    """Whether ``text`` has the form ``WHERE:NAME`` (a file or module, then an identifier)."""
    where, sep, attr = text.rpartition(":")
    return bool(sep and where and attr.isidentifier())


def is_file_spec(where: str) -> bool:
    """Whether the part before ``:`` names a file rather than a module."""
    return where.endswith(".py") or "/" in where or "\\" in where


def import_file(where: str, error: type[InputError] = InputError) -> object:
    """Import a Python file once per absolute path, as a module of a private name (so that two
    files of the same name do not collide)."""
    path = Path(where).expanduser().resolve()
    if not path.is_file():
        raise error(f"plugin file not found: {where}")
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    module_name = f"crbnet_plugin_{path.stem}_{digest}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise error(f"cannot import {where}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise error(f"importing {where} failed: {type(exc).__name__}: {exc}") from exc
    return module


def import_module(where: str, what: str, error: type[InputError] = InputError) -> object:
    """An importable module, or one line saying why not."""
    try:
        return importlib.import_module(where)
    except ImportError as exc:
        raise error(f"cannot import module {where!r} for the {what}: {exc}") from None


def load_object(spec: str, what: str, error: type[InputError] = InputError,
                item: str = "object") -> object:
    """The object that ``FILE.py:NAME`` or ``package.module:NAME`` names (``item``: what it
    should be, in words, for the message when it is missing)."""
    where, _, attr = spec.rpartition(":")
    module = (import_file(where, error) if is_file_spec(where)
              else import_module(where, what, error))
    if not hasattr(module, attr):
        raise error(f"{where} has no {item} named {attr!r}")
    return getattr(module, attr)


def entry_points(group: str) -> dict[str, importlib.metadata.EntryPoint]:
    """Installed entry points of ``group`` by name (not loaded yet)."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=group)}


@dataclass(frozen=True)
class ExtensionPoint(Generic[Entry]):
    """One extension point: where its names come from and how a loaded object is checked.

    Attributes:
        what: the thing in words, for messages ("model", "loss", ...).
        group: the entry-point group.
        registry: returns the live registry ``{name: entry}`` (built-ins and registered ones).
        adopt: ``adopt(obj, spec) -> entry`` — checks a loaded object and makes the registry
            entry of it (raises ``error`` with one line when it is not the right kind of
            thing); ``spec`` is the name or spec it was loaded by.
        error: the :class:`InputError` subclass raised for an unknown or broken plugin.
        form: how a spec is written, for messages.
        item: what a spec's NAME is, in words ("class", "function", ...).
    """

    what: str
    group: str
    registry: Callable[[], Mapping[str, Entry]]
    adopt: Callable[[object, str], Entry]
    error: type[InputError] = InputError
    form: str = "FILE.py:NAME or package.module:NAME"
    item: str = "object"

    def plugins(self) -> dict[str, importlib.metadata.EntryPoint]:
        """Installed plugins by name (a plugin does not shadow a registered name)."""
        registered = self.registry()
        return {name: ep for name, ep in entry_points(self.group).items()
                if name not in registered}

    def names(self) -> list[str]:
        """Registered names, then installed plugin names (sorted): what help texts list."""
        return list(self.registry()) + sorted(self.plugins())

    def resolve(self, spec: str) -> Entry:
        """The entry that ``spec`` names (module docstring for the order); one line in
        :attr:`error` when it cannot."""
        registered = self.registry()
        if spec in registered:
            return registered[spec]
        plugins = self.plugins()
        if spec in plugins:
            try:
                obj = plugins[spec].load()
            except Exception as exc:
                raise self.error(f"loading plugin {self.what} {spec!r} failed: "
                                 f"{type(exc).__name__}: {exc}") from None
            return self.adopt(obj, spec)
        if not is_spec(spec):
            raise self.error(f"unknown {self.what} {spec!r}; available: "
                             f"{', '.join(self.names()) or 'none'}, or {self.form}")
        return self.adopt(load_object(spec, self.what, self.error, self.item), spec)


__all__ = ["ExtensionPoint", "GROUPS", "is_spec", "is_file_spec", "import_file",
           "import_module", "load_object", "entry_points"]
