"""The registry of sequence kinds: each kind a frozen dataclass registered by name, found by
name, by installed plugin or as ``FILE.py:CLASS`` (:mod:`crbnet.plugins`), and built from a
JSON-like dict.

A sequence kind of one's own is a frozen dataclass with a ``kind`` field (``init=False``),
``n_timepoints`` and ``to_dict()``, decorated with :func:`register_sequence_kind`; the built-in
kinds are in :mod:`crbnet.physics.sequence_kinds`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from crbnet import plugins
from crbnet.errors import InputError


class SequenceError(InputError):
    """A sequence file or object is malformed."""


@dataclass(frozen=True)
class SequenceKind:
    """A registered sequence kind.

    Attributes:
        name: the kind (``SignalModel.sequence_kind``, ``seq.kind``).
        cls: its dataclass.
        required, optional: JSON fields (the dataclass's init fields without / with a default).
        read_csv: reader of a CSV file of this kind (``cls.read_csv``), or None.
        read_mat: reader of a MATLAB .mat file of this kind (``cls.read_mat``), or None.
    """

    name: str
    cls: type
    required: frozenset[str]
    optional: frozenset[str]
    read_csv: Callable[[Path], Any] | None = None
    read_mat: Callable[[Path], Any] | None = None


#: The sequence kinds by name.
KINDS: dict[str, SequenceKind] = {}


def register_sequence_kind(cls: type) -> type:
    """Class decorator: register a sequence dataclass under its ``kind`` field's default."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} must be a dataclass to be a sequence kind")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if "kind" not in fields or not isinstance(fields["kind"].default, str):
        raise TypeError(f"{cls.__name__} needs a field kind: str = field(default=..., "
                        "init=False)")
    name = fields["kind"].default
    if name in KINDS and KINDS[name].cls is not cls:
        raise ValueError(f"sequence kind {name!r} is already registered")
    given = [f for f in fields.values() if f.init]
    required = frozenset(f.name for f in given if f.default is dataclasses.MISSING
                         and f.default_factory is dataclasses.MISSING)
    KINDS[name] = SequenceKind(name, cls, required,
                               frozenset(f.name for f in given) - required,
                               getattr(cls, "read_csv", None), getattr(cls, "read_mat", None))
    return cls


def _adopt_kind(obj: object, spec: str) -> SequenceKind:
    """A sequence dataclass loaded from a plugin, registered (once) and returned as its kind."""
    if not isinstance(obj, type):
        raise SequenceError(f"{spec} is not a sequence dataclass")
    try:
        register_sequence_kind(obj)
    except (TypeError, ValueError) as exc:
        raise SequenceError(f"{spec}: {exc}") from None
    entry = next(k for k in KINDS.values() if k.cls is obj)
    if not plugins.is_spec(spec) and entry.name != spec:
        raise SequenceError(f"plugin sequence kind {spec!r} is a class of kind {entry.name!r}")
    return entry


#: The sequence kinds' extension point (:mod:`crbnet.plugins`): the registered kinds, entry
#: points in ``crbnet.sequences`` (a plugin model's kind is loaded when it is first asked for),
#: ``FILE.py:CLASS``, ``package.module:CLASS``.
PLUGINS = plugins.ExtensionPoint("sequence kind", plugins.GROUPS["sequence kind"],
                                 lambda: KINDS, _adopt_kind, error=SequenceError,
                                 form="FILE.py:CLASS, or package.module:CLASS", item="class")


def kind_of(name: str) -> SequenceKind:
    """The sequence kind ``name``: a registered kind, an installed plugin's, or a class named
    by ``FILE.py:CLASS`` / ``package.module:CLASS`` (registered on the way);
    :class:`SequenceError` for an unknown one."""
    return PLUGINS.resolve(name)


def from_dict(data: dict, kind: str) -> Any:
    """Build a sequence of a registered ``kind`` ('mt', 'fisp', 'times', ...) from a JSON-like
    dict."""
    entry = kind_of(kind)
    if not isinstance(data, dict):
        raise SequenceError("a sequence must be a JSON object")
    missing = entry.required - data.keys()
    if missing:
        raise SequenceError(f"sequence is missing field(s): {', '.join(sorted(missing))}")
    unknown = data.keys() - entry.required - entry.optional
    if unknown:
        raise SequenceError(f"sequence has unknown field(s): {', '.join(sorted(unknown))}")
    return entry.cls(**data)


__all__ = ["SequenceError", "SequenceKind", "KINDS", "PLUGINS", "register_sequence_kind",
           "kind_of", "from_dict"]
