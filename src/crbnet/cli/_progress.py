"""The command line's progress bars: tqdm on stderr (looked up when each bar opens, so a
redirected ``sys.stderr`` is honoured), drawn only where stderr is a terminal."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def terminal_bars(*, total: float | None, desc: str, unit: str) -> tqdm:
    """A :class:`crbnet.progress.ProgressFactory` for the CLI."""
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False,
                disable=None, dynamic_ncols=True)


def terminal_lines(text: str) -> None:
    """A line of progress text on stderr that does not tear an open bar (the CLI's ``log``)."""
    tqdm.write(text, file=sys.stderr)
