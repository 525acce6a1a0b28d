"""Typed validation of configuration tables against the dataclasses that declare them.

The training configuration is declared once, as dataclasses with type annotations
(:class:`crbnet.learning.training_config.TrainConfig` and its sections, :class:`crbnet.learning.nets.NetConfig`,
:class:`ModelTable` below). :func:`check_table` checks a table read from a TOML/JSON file or
from ``--set`` against those annotations before any dataclass is built or any work starts, and
names the offending key, the expected type and the value it got. Range rules (``lr > 0``, ...)
live in the sections' ``validate``/``__post_init__``; this module answers "is it the right kind
of value at all".

Accepted values per annotation: ``int`` — an integer (not a bool, not 3.5); ``float`` — a finite
integer or real number (not a bool, not inf/NaN); ``bool`` — true/false; ``str`` — text;
``list[X]`` — a list (or tuple) of X; ``dict[str, X]`` — a table with text keys and X values;
``A | B`` — either; ``Any`` — anything (checked elsewhere).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping

from crbnet.errors import InputError


def check_table(section: str, schema: type, table: Any) -> dict:
    """Check ``table`` against the dataclass ``schema``; returns it as a dict.

    Raises InputError naming ``section.key`` for an unknown key or a value of the wrong type.
    """
    if not isinstance(table, Mapping):
        raise InputError(f"[{section}] must be a table of options, got {_shown(table)}")
    hints = typing.get_type_hints(schema)
    known = {f.name for f in dataclasses.fields(schema)}
    unknown = set(table) - known
    if unknown:
        raise InputError(f"unknown option(s) in [{section}]: {', '.join(sorted(map(str, unknown)))}"
                         f"; known: {', '.join(sorted(known))}")
    for key, value in table.items():
        check_value(f"{section}.{key}", hints[key], value)
    return dict(table)


def check_value(key: str, hint: Any, value: Any) -> None:
    """Raise InputError unless ``value`` fits the annotation ``hint`` (see the module doc)."""
    if not _fits(hint, value):
        raise InputError(f"{key} must be {describe_type(hint)}, got {_shown(value)}")


def _fits(hint: Any, value: Any) -> bool:
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(h, value) for h in typing.get_args(hint))
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return (isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(value))
    if hint is str:
        return isinstance(value, str)
    if hint is list or origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        return isinstance(value, (list, tuple)) and all(_fits(item, v) for v in value)
    if hint is dict or origin is dict:
        key_type, item = typing.get_args(hint) or (Any, Any)
        return isinstance(value, Mapping) and all(
            _fits(key_type, k) and _fits(item, v) for k, v in value.items())
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def describe_type(hint: Any) -> str:
    """Words for an annotation: 'an integer', 'a finite number or a list of finite numbers'."""
    if hint is Any:
        return "anything"
    if hint is type(None):
        return "absent (none)"
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        parts = [describe_type(h) for h in typing.get_args(hint) if h is not type(None)]
        return " or ".join(parts)
    words = {bool: "true or false", int: "an integer", float: "a finite number", str: "text"}
    if hint in words:
        return words[hint]
    if hint is list or origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        return "a list" if item is Any else f"a list of {_plural(describe_type(item))}"
    if hint is dict or origin is dict:
        _, item = typing.get_args(hint) or (Any, Any)
        return "a table" if item is Any else f"a table of {_plural(describe_type(item))}"
    return getattr(hint, "__name__", str(hint))


def _plural(words: str) -> str:
    for one, many in (("an integer", "integers"), ("a finite number", "finite numbers"),
                      ("true or false", "true/false values"), ("a table", "tables"),
                      ("a list", "lists")):
        if words.startswith(one):
            return many + words[len(one):]
    return words


def _shown(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


@dataclass
class ModelTable:
    """The ``[model]`` table of a training config: which model and how it is set up.

    Attributes:
        name: model name (must match ``--model``).
        fixed: parameters held fixed, name → value (SI).
        free: parameters estimated that are fixed by default (e.g. ``["B1"]``).
        sequence: sequence file, relative to the config file's folder.
        times: echo/inversion times in s (t2_decay, ir_t1).
        options: the model's declared options, name → value (as ``--model-option``).
    """

    name: str = ""
    fixed: dict[str, float] = field(default_factory=dict)
    free: list[str] = field(default_factory=list)
    sequence: str = ""
    times: list[float] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)


__all__ = ["check_table", "check_value", "describe_type", "ModelTable"]
