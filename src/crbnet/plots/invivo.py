"""Compact side-by-side map figures for an in-vivo slice: one row per estimator (or model), one
column per map, one colour scale per column (so rows compare directly)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from crbnet.plots import save_figure, subplots
from crbnet.plots.maps import display_scale


def _limits(values: np.ndarray, unit: str) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if unit == "rad/s" or (finite.size and finite.min() < 0):
        bound = float(np.percentile(np.abs(finite), 98)) if finite.size else 1.0
        return -bound, bound
    if not finite.size:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(finite, [2, 98]))
    return lo, max(hi, lo + 1e-12)


def plot_rows_of_maps(rows: Mapping[str, Mapping[str, np.ndarray]], names: Sequence[str],
                      units: Mapping[str, str], path: str | Path, *,
                      masks: Mapping[str, np.ndarray] | None = None, title: str | None = None,
                      dpi: int = 72, panel_size: tuple[float, float] = (1.55, 1.75),
                      aspect: str = "equal", limits_from_all_rows: bool = False) -> None:
    """PNG with one row per entry of ``rows`` (``{row label: {map name: 2-D array (SI)}}``)
    and one column per name in ``names``; voxels outside ``masks[row]`` are blank. Colour
    limits per column come from the first row (2nd–98th percentile; symmetric for signed maps).
    Arrays are shown with their first axis to the right (``panel_size``: inches per panel;
    ``aspect='auto'`` stretches thin strips to the panel; ``limits_from_all_rows``: colour
    limits from every row's voxels, for rows whose values differ widely)."""
    labels = list(rows)
    fig, axes = subplots(len(labels), len(names), figsize=(panel_size[0] * len(names),
                                                            panel_size[1] * len(labels)),
                         squeeze=False)
    first = labels[0]
    for c, name in enumerate(names):
        unit = units.get(name, "")
        ref = np.asarray(rows[first][name], float)
        ref_mask = None if masks is None else np.asarray(masks[first], bool)
        factor, shown_unit = display_scale(unit, ref if ref_mask is None else ref[ref_mask])
        pool = [np.asarray(rows[k][name], float)[np.asarray(masks[k], bool)]
                if masks is not None else np.asarray(rows[k][name], float).ravel()
                for k in (labels if limits_from_all_rows else [first]) if name in rows[k]]
        lo, hi = _limits(np.concatenate(pool), unit)
        for r, label in enumerate(labels):
            ax = axes[r][c]
            ax.axis("off")
            if name not in rows[label]:
                continue
            data = np.asarray(rows[label][name], float)
            if masks is not None:
                data = np.where(np.asarray(masks[label], bool), data, np.nan)
            im = ax.imshow(data.T * factor, origin="lower", vmin=lo * factor, vmax=hi * factor,
                           cmap="twilight_shifted" if lo < 0 else "viridis",
                           interpolation="nearest", aspect=aspect)
            if r == 0:
                ax.set_title(f"{name} ({shown_unit})" if shown_unit else name, fontsize=8)
            if c == 0:
                ax.text(-0.08, 0.5, label, transform=ax.transAxes, rotation=90, fontsize=8,
                        ha="right", va="center")
            if r == len(labels) - 1:
                bar = fig.colorbar(im, ax=ax, orientation="horizontal", fraction=0.05, pad=0.02)
                bar.ax.tick_params(labelsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=dpi)


__all__ = ["plot_rows_of_maps"]
