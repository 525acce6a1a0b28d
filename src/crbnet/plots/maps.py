"""Montages of parameter maps: one panel per map, colour bar with units, central slice.

Values are stored in SI; for reading, times are shown in ms (or µs below 1 ms) and the unit on
the colour bar says so. Colour limits are the 1st and 99th percentiles inside the mask (for
positive maps at most 4× the median), so a few wild or very long values (CSF) do not wash out
the tissue contrast; those voxels saturate.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from crbnet.plots import save_figure, subplots


def display_scale(unit: str, values: np.ndarray) -> tuple[float, str]:
    """Factor and label to show SI ``values`` of ``unit`` in a readable unit."""
    if unit == "s":
        finite = values[np.isfinite(values)]
        typical = float(np.percentile(np.abs(finite), 90)) if finite.size else 1.0
        if 0 < typical < 1e-3:
            return 1e6, "µs"
        return 1e3, "ms"
    if unit in ("", "1"):
        return 1.0, ""
    return 1.0, unit


def choose_slice(mask: np.ndarray | None, shape: Sequence[int]) -> int:
    """Index along the last axis with the most mask voxels (the central one without a mask)."""
    if len(shape) < 3:
        return 0
    if mask is None or not np.any(mask):
        return shape[-1] // 2
    return int(np.argmax(mask.reshape(-1, shape[-1]).sum(0)))


def _as_slice(data: np.ndarray, index: int) -> np.ndarray:
    data = np.asarray(data)
    if data.ndim >= 3:
        data = data[..., index] if data.shape[-1] > 1 else data[..., 0]
        while data.ndim > 2:
            data = data[..., 0]
    return data


def plot_parameter_maps(maps: Mapping[str, np.ndarray], units: Mapping[str, str],
                        path: str | Path, *, mask: np.ndarray | None = None,
                        title: str | None = None, rows: Sequence[Sequence[str]] | None = None,
                        cmaps: Mapping[str, str] | None = None,
                        limits: Mapping[str, tuple[float, float]] | None = None,
                        slice_index: int | None = None) -> None:
    """Write a PNG montage of ``maps`` (arrays on one grid; 3-D maps show one slice).

    Args:
        maps: ``{label: array}`` in SI units.
        units: ``{label: SI unit}`` ('s', '1/s', 'rad', '' ...); missing labels show no unit.
        path: PNG file (written atomically).
        mask: voxels to show (others blank) and to take colour limits from.
        title: figure title.
        rows: labels per row (default: all maps, up to 4 per row).
        cmaps: colour map per label (default viridis; 'twilight' for units 'rad').
        limits: fixed colour limits per label (SI), e.g. the truth's for comparable images.
        slice_index: slice along the last axis (default: the one with most mask voxels).
    """
    labels = list(maps)
    if rows is None:
        per_row = min(4, max(1, len(labels)))
        rows = [labels[i:i + per_row] for i in range(0, len(labels), per_row)]
    n_rows = len(rows)
    n_cols = max(len(r) for r in rows)
    first = np.asarray(maps[labels[0]])
    index = choose_slice(mask, first.shape) if slice_index is None else slice_index
    mask2 = None if mask is None else _as_slice(mask, index).astype(bool)
    fig, axes = subplots(n_rows, n_cols, figsize=(3.2 * n_cols, 3.0 * n_rows), squeeze=False)
    for r, row in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.axis("off")
            if c >= len(row):
                continue
            label = row[c]
            data = _as_slice(maps[label], index).astype(np.float64)
            unit = units.get(label, "")
            factor, shown_unit = display_scale(unit, data if mask2 is None else data[mask2])
            shown = data * factor
            if mask2 is not None:
                shown = np.where(mask2, shown, np.nan)
            finite = shown[np.isfinite(shown)]
            if limits and label in limits:
                lo, hi = (v * factor for v in limits[label])
            elif unit == "rad":
                lo, hi = -math.pi, math.pi
            elif finite.size:
                lo, hi = np.percentile(finite, [1, 99])
                # A few long values (CSF T2 ≈ 2 s) would flatten the tissue contrast: cap the
                # window at 4× the median for positive maps (those voxels saturate).
                median = float(np.median(finite))
                if lo >= 0 and median > 0:
                    hi = min(hi, 4 * median)
            else:
                lo, hi = 0.0, 1.0
            if not hi > lo:
                lo, hi = lo - 0.5 * (abs(lo) + 1e-12), hi + 0.5 * (abs(hi) + 1e-12)
            cmap = (cmaps or {}).get(label, "twilight" if unit == "rad" else "viridis")
            # Array axes (x, y) shown with x to the right and y (anterior) up.
            im = ax.imshow(shown.T, origin="lower", cmap=cmap, vmin=lo, vmax=hi,
                           interpolation="nearest")
            ax.set_title(label, fontsize=10)
            bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
            bar.set_label(shown_unit if shown_unit else "(unitless)", fontsize=8)
            bar.ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)


__all__ = ["plot_parameter_maps", "display_scale", "choose_slice"]
