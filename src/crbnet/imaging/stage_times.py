"""Seconds per stage of a run, for ``apply.json``'s ``seconds_by_stage``."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator


class StageTimes:
    """Seconds spent per stage of :func:`~crbnet.imaging.apply.apply_to_volume` (what
    ``apply.json`` reports under ``seconds_by_stage``): ``survey``, ``read``, ``estimate``,
    ``m0_residual``, ``signal_and_crb``, ``write``; the rest of the run is ``other``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._open: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._open[name] = time.perf_counter()
        try:
            yield
        finally:
            t0 = self._open.pop(name)
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

    def report(self, total: float) -> dict[str, float]:
        """Seconds per stage so far (a stage still running counts until now) and ``other``."""
        now = time.perf_counter()
        seconds = dict(self.seconds)
        for name, t0 in self._open.items():
            seconds[name] = seconds.get(name, 0.0) + now - t0
        out = {name: round(value, 4) for name, value in seconds.items()}
        out["other"] = round(max(0.0, total - sum(seconds.values())), 4)
        return out
