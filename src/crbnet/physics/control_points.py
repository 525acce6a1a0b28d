"""Hybrid-state control points: a few values per cycle, Hann-interpolated onto every TR."""

from __future__ import annotations

import numpy as np


def hann_interpolate(control_points: np.ndarray, n_out: int) -> np.ndarray:
    """Interpolate a periodic list of control points onto ``n_out`` samples.

    Between points a and b at fraction u the value is
    ``(a*(1 - cos(pi*(1-u))) + b*(1 - cos(pi*u))) / 2``; the last point connects to the first,
    since the train repeats every cycle.
    """
    cp = np.asarray(control_points, dtype=np.float64)
    n_cp = cp.size
    pos = np.arange(n_out) * n_cp / n_out
    i = np.floor(pos).astype(int)
    u = pos - i
    a = cp[i % n_cp]
    b = cp[(i + 1) % n_cp]
    return (a * (1 - np.cos(np.pi * (1 - u))) + b * (1 - np.cos(np.pi * u))) / 2


__all__ = ["hann_interpolate"]
