"""Declared settings of an extension (a model's constructor keyword, a loss's option): one
conversion rule for command-line text and configuration values."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from crbnet.errors import InputError


@dataclass(frozen=True)
class Option:
    """A setting an extension declares.

    Attributes:
        name: keyword and attribute name.
        type: int, float, bool or str; command-line text and config values are converted
            with it.
        default: its value where none is given.
        description: one line for humans.
    """

    name: str
    type: type
    default: Any
    description: str = ""
    #: How error messages name the option ('model option', 'loss option').
    what: ClassVar[str] = "option"

    def convert(self, value: Any) -> Any:
        """``value`` (command-line text or a config value) as :attr:`type` (``true``/``false``
        for bool); a one-line :class:`~crbnet.errors.InputError` when it is not one."""
        if self.type is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text not in ("true", "false", "1", "0"):
                raise InputError(f"{self.what} {self.name} expects true or false, "
                                 f"got {value!r}")
            return text in ("true", "1")
        if self.type in (int, float) and isinstance(value, bool):
            raise InputError(f"{self.what} {self.name} expects {self.type.__name__}, "
                             f"got {value!r}")
        try:
            converted = self.type(value)
        except (TypeError, ValueError):
            raise InputError(f"{self.what} {self.name} expects {self.type.__name__}, "
                             f"got {value!r}") from None
        if self.type is int and isinstance(value, float) and converted != value:
            raise InputError(f"{self.what} {self.name} expects an integer, got {value!r}")
        return converted
