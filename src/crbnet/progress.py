"""Progress reporting for long library calls, without the library drawing anything.

A long-running library function takes ``progress: ProgressFactory | None``. It opens one bar
per stage with ``progress(total=..., desc=..., unit=...)`` used as a context manager and calls
``bar.update(n)`` as work is done (``set_postfix`` for a short status is optional). The default,
:func:`silent`, does nothing, so library calls print nothing unless the caller asks; the
command line passes :func:`crbnet.cli._progress.terminal_bars` (tqdm bars on stderr).

Any object with this shape works, e.g. a notebook's ``tqdm.notebook.tqdm`` or a logger adapter.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Protocol


class ProgressBar(Protocol):
    """One stage's bar: ``update(n)`` adds ``n`` units of work done."""

    def update(self, n: float = 1) -> Any: ...

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> Any: ...


class ProgressFactory(Protocol):
    """Opens a bar for a stage of ``total`` units (``None``: unknown)."""

    def __call__(self, *, total: float | None, desc: str, unit: str) -> AbstractContextManager[ProgressBar]: ...


class _SilentBar:
    def __enter__(self) -> _SilentBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: float = 1) -> None:
        return None

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None:
        return None


def silent(*, total: float | None = None, desc: str = "", unit: str = "it") -> _SilentBar:
    """A bar that reports nothing (the library's default)."""
    return _SilentBar()


def resolve(progress: ProgressFactory | bool | None) -> ProgressFactory:
    """``progress`` itself; :func:`silent` for ``None`` or ``False``; for ``True`` (the older
    boolean form of the argument) tqdm bars on stderr, which the caller asked for."""
    if progress is None or progress is False:
        return silent
    if progress is True:
        from tqdm.auto import tqdm

        return tqdm
    return progress
