"""Figure of an estimator comparison: MSE/CRB per estimator and parameter as a table of
coloured cells, and the speed of each estimator beside it on the same rows.

A table reads at a glance for any number of estimators and parameters — one row per estimator,
one column per parameter, the value written in each cell — where grouped bars grow wider than a
page. Colours follow the evaluation figure: white is ideal (MSE/CRB = 1), red above, blue below,
on a logarithmic scale symmetric about 1; grey: no value (the CRB is infinite there)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib import ticker

from crbnet.plots import save_figure, subplots
from crbnet.plots.evaluation import _norm_and_cmap, _plain_log_ticks

_CELL_IN = 0.95      # inches per parameter column
_ROW_IN = 0.42       # inches per estimator row


def _mse_table(rows: Sequence[Mapping[str, Any]], parameters: Sequence[str]) -> np.ndarray:
    table = np.full((len(rows), len(parameters)), np.nan)
    for i, row in enumerate(rows):
        for j, p in enumerate(parameters):
            v = row["mse_over_crb"].get(p)
            if v is not None and math.isfinite(v):
                table[i, j] = v
    return table


def _cell_text(value: float) -> str:
    if not math.isfinite(value):
        return "n/a"
    return f"{value:,.0f}" if value >= 1000 else f"{value:.3g}"


def _draw_table(fig: Any, ax: Any, table: np.ndarray, parameters: Sequence[str]) -> None:
    norm, cmap = _norm_and_cmap("mse_over_crb", table)
    image = ax.imshow(np.ma.masked_invalid(table), norm=norm, cmap=cmap, aspect="auto")
    for (i, j), value in np.ndenumerate(table):
        strong = math.isfinite(value) and value > 0 and abs(math.log(value)) > 0.6 * math.log(
            norm.vmax)
        ax.text(j, i, _cell_text(value), ha="center", va="center", fontsize=9,
                color="white" if strong else "black")
    ax.set_xticks(np.arange(len(parameters)), parameters)
    ax.xaxis.tick_top()
    ax.tick_params(length=0)
    ax.set_title("MSE / CRB (mean over test voxels; 1 = efficient, lower is better)",
                 fontsize=9)
    cbar = fig.colorbar(image, ax=ax, location="bottom", shrink=0.8, aspect=30, pad=0.02)
    cbar.set_label("MSE / CRB", fontsize=9)
    decades = math.log10(norm.vmax / norm.vmin)
    _plain_log_ticks(cbar.ax.xaxis, subs=(1.0,) if decades > 3 else (1.0, 2.0, 5.0))


def _compact(value: float) -> str:
    """1, 10, 100, 1k, 10k, 100k, 1M, ... (speed ticks that never run together)."""
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= factor:
            return f"{value / factor:g}{suffix}"
    return f"{value:g}"


def _draw_speed(ax: Any, rows: Sequence[Mapping[str, Any]]) -> None:
    speeds = np.array([float(row["voxels_per_second"]) for row in rows])
    y = np.arange(len(rows))
    ax.barh(y, speeds, height=0.6, color="0.55")
    ax.set_xscale("log")
    finite = speeds[np.isfinite(speeds) & (speeds > 0)]
    if finite.size:
        ax.set_xlim(finite.min() / 3, finite.max() * 30)    # room for the labels
    for i, s in enumerate(speeds):
        if math.isfinite(s) and s > 0:
            ax.annotate(f" {s:,.0f}", (s, i), va="center", fontsize=8)
    ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0,)))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: _compact(v)))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.tick_params(axis="y", length=0)
    ax.set_xlabel("voxels / s (higher is better)")
    ax.set_title("inference speed", fontsize=9)
    ax.grid(True, axis="x", alpha=0.3)


def plot_comparison(rows: Sequence[Mapping[str, Any]], parameters: Sequence[str],
                    path: str | Path, title: str) -> None:
    """The MSE/CRB table (estimators × parameters) and the speed of each estimator.

    ``rows``: one mapping per estimator with ``label``, ``mse_over_crb`` ({param: value}) and
    ``voxels_per_second``.
    """
    n, P = len(rows), len(parameters)
    table_width = 1.2 + _CELL_IN * max(P, 2)
    fig, (ax_table, ax_speed) = subplots(
        1, 2, figsize=(table_width + 3.6, 2.3 + _ROW_IN * max(n, 2)), sharey=True,
        gridspec_kw={"width_ratios": [table_width, 3.0]}, layout="constrained")
    _draw_table(fig, ax_table, _mse_table(rows, parameters), parameters)
    ax_table.set_yticks(np.arange(n), [str(row["label"]) for row in rows])
    _draw_speed(ax_speed, rows)
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)


__all__ = ["plot_comparison"]
