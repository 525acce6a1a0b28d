"""Figure of the evaluation against the CRB (the comparison figure: crbnet.plots.comparison).

Colour conventions (same in every panel, so no legend hunt): white is ideal — ``bias/√CRB = 0``,
``std/√CRB = 1``, ``MSE/CRB = 1``; red is above, blue below. Ratio maps use a logarithmic scale
symmetric about 1; the bias map a linear scale symmetric about 0. Grey cells: the CRB is
infinite there (parameter not identifiable) or the estimator failed. Times are shown in ms
(µs for sub-millisecond parameters such as T2s).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from crbnet.plots import get_cmap, save_figure, subplots

if TYPE_CHECKING:  # pragma: no cover
    from crbnet.assessment.evaluate import EvaluationResult

METRICS = ("bias_over_sqrt_crb", "std_over_sqrt_crb", "mse_over_crb")
METRIC_LABELS = {
    "bias_over_sqrt_crb": "bias / √CRB",
    "std_over_sqrt_crb": "std / √CRB",
    "mse_over_crb": "MSE / CRB",
}


def display_scale(unit: str, values: np.ndarray | Sequence[float]) -> tuple[float, str]:
    """Factor and unit label for showing SI ``values`` to people (s → ms or µs)."""
    if unit == "s":
        top = float(np.nanmax(np.abs(np.asarray(values, dtype=float)))) if len(values) else 1.0
        return (1e6, "µs") if top < 1e-3 else (1e3, "ms")
    return 1.0, unit


def axis_label(name: str, unit: str, values: np.ndarray | Sequence[float]) -> str:
    factor, shown = display_scale(unit, values)
    return f"{name} ({shown})" if shown else name


def _cell_edges(values: np.ndarray, log: bool) -> np.ndarray:
    v = np.log(values) if log else values.astype(float)
    if v.size == 1:
        half = 0.5 * (abs(v[0]) if v[0] else 1.0)
        edges = np.array([v[0] - half, v[0] + half])
    else:
        mid = 0.5 * (v[1:] + v[:-1])
        edges = np.concatenate(([2 * v[0] - mid[0]], mid, [2 * v[-1] - mid[-1]]))
    return np.exp(edges) if log else edges


def _is_log_axis(values: np.ndarray) -> bool:
    if values.size < 3 or np.any(values <= 0):
        return False
    ratios = values[1:] / values[:-1]
    return bool(np.allclose(ratios, ratios[0], rtol=1e-6) and not
                np.allclose(np.diff(values), np.diff(values)[0], rtol=1e-6))


def _plain_log_ticks(axis: Any, subs: tuple[float, ...] = (1.0, 2.0, 5.0)) -> None:
    """Log axis ticks at ``subs`` × 10ⁿ written as plain numbers (not 2×10²)."""
    from matplotlib import ticker

    axis.set_major_locator(ticker.LogLocator(base=10, subs=subs))
    axis.set_major_formatter(ticker.FuncFormatter(
        lambda v, _: f"{v:,.0f}" if v >= 1000 else f"{v:g}"))
    axis.set_minor_formatter(ticker.NullFormatter())


def _colorbar(fig: Any, mappable: Any, ax: Any, metric: str) -> None:
    cbar = fig.colorbar(mappable, ax=ax)
    cbar.set_label(METRIC_LABELS[metric])
    if metric != "bias_over_sqrt_crb":
        decades = math.log10(mappable.norm.vmax / mappable.norm.vmin)
        subs = ((1.0,) if decades > 3 else (1.0, 2.0, 5.0) if decades > 1.2
                else (1.0, 1.5, 2.0, 3.0, 5.0, 7.0))
        _plain_log_ticks(cbar.ax.yaxis, subs=subs)


def _norm_and_cmap(metric: str, data: np.ndarray) -> tuple[Any, Any]:
    from matplotlib import colors

    cmap = get_cmap("RdBu_r").with_extremes(bad="0.75")
    finite = data[np.isfinite(data)]
    if metric == "bias_over_sqrt_crb":
        v = max(float(np.max(np.abs(finite))) if finite.size else 0.0, 0.1)
        return colors.Normalize(-v, v), cmap
    positive = finite[finite > 0]
    if positive.size:
        v = max(float(positive.max()), 1.0 / float(positive.min()), 1.5)
    else:
        v = 1.5
    return colors.LogNorm(1.0 / v, v), cmap


def _title(result: "EvaluationResult") -> str:
    gross = result.gross_error_summary()
    gross_line = "" if gross is None else (
        f"\nestimates off by > {gross['threshold_sqrt_crb']:g} √CRB: "
        f"{100 * gross['gross_fraction']:.2f} % — local minima (cost above the truth's) "
        f"{100 * gross['local_minimum_fraction']:.2f} %, alternative solutions (at or below) "
        f"{100 * gross['alternative_fraction']:.2f} %")
    return (f"{result.estimator} on {result.model}: SNR {result.snr:g} (|M0|/σ, |M0| = 1), "
            f"{result.realizations} noise realizations per point, "
            f"{result.voxels_per_second:,.0f} voxels/s\n"
            "white = ideal (bias 0, std = √CRB, MSE = CRB); red above, blue below; "
            "grey = CRB infinite or estimator failed" + gross_line)


def plot_evaluation(result: "EvaluationResult", path: str | Path) -> None:
    """Heat maps (2-D grid), curves (1-D grid) or scatter maps (samples): one panel per
    estimated parameter (rows) and metric (columns)."""
    grid = result.grid
    P = len(result.parameters)
    fig, axes = subplots(P, len(METRICS), figsize=(4.8 * len(METRICS), 3.4 * P + 1.1),
                             squeeze=False, layout="constrained")
    data = {m: getattr(result, m) for m in METRICS}
    summary = result.summary()
    for i, param in enumerate(result.parameters):
        for k, metric in enumerate(METRICS):
            ax = axes[i, k]
            values = data[metric][:, i]
            mean = summary[param][metric]
            what = "mean |·|" if metric == "bias_over_sqrt_crb" else "mean"
            ax.set_title(f"{param}: {METRIC_LABELS[metric]}  ({what} {mean:.3g})", fontsize=10)
            if len(grid.shape) == 2:
                _heat_map(ax, fig, result, values.reshape(grid.shape), metric)
            elif len(grid.shape) == 1:
                _curve(ax, result, values, metric)
            else:
                _scatter(ax, fig, result, values, metric)
    fig.suptitle(_title(result), fontsize=10)
    save_figure(fig, path)


def _heat_map(ax: Any, fig: Any, result: "EvaluationResult", values: np.ndarray,
              metric: str) -> None:
    (name_x, vx), (name_y, vy) = list(result.grid.axes.items())
    fx, _ = display_scale(result.units[name_x], vx)
    fy, _ = display_scale(result.units[name_y], vy)
    log_x, log_y = _is_log_axis(vx), _is_log_axis(vy)
    norm, cmap = _norm_and_cmap(metric, values)
    # values[i, j] is at (first axis i, second axis j): the first axis goes along x.
    mesh = ax.pcolormesh(_cell_edges(vx, log_x) * fx, _cell_edges(vy, log_y) * fy,
                         np.ma.masked_invalid(values.T), norm=norm, cmap=cmap, shading="flat")
    if log_x:
        ax.set_xscale("log")
        _plain_log_ticks(ax.xaxis)
    if log_y:
        ax.set_yscale("log")
        _plain_log_ticks(ax.yaxis)
    ax.set_xlabel(axis_label(name_x, result.units[name_x], vx))
    ax.set_ylabel(axis_label(name_y, result.units[name_y], vy))
    _colorbar(fig, mesh, ax, metric)


def _curve(ax: Any, result: "EvaluationResult", values: np.ndarray, metric: str) -> None:
    ((name, v),) = list(result.grid.axes.items())
    factor, _ = display_scale(result.units[name], v)
    ax.plot(v * factor, values, "o-", ms=3)
    ax.axhline(0.0 if metric == "bias_over_sqrt_crb" else 1.0, color="k", lw=0.8, ls="--",
               label="ideal")
    if _is_log_axis(v):
        ax.set_xscale("log")
        _plain_log_ticks(ax.xaxis)
    finite = values[np.isfinite(values)]
    if metric != "bias_over_sqrt_crb" and finite.size and np.all(finite > 0):
        ax.set_yscale("log")
        ax.set_ylim(min(finite.min(), 0.5) / 1.2, max(finite.max(), 2.0) * 1.2)
        _plain_log_ticks(ax.yaxis)
    ax.set_xlabel(axis_label(name, result.units[name], v))
    ax.set_ylabel(METRIC_LABELS[metric])
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def _scatter(ax: Any, fig: Any, result: "EvaluationResult", values: np.ndarray,
             metric: str) -> None:
    params = result.parameters
    norm, cmap = _norm_and_cmap(metric, values)
    x = result.theta[:, 0]
    fx, _ = display_scale(result.units[params[0]], x)
    if len(params) >= 2:
        y = result.theta[:, 1]
        fy, _ = display_scale(result.units[params[1]], y)
        sc = ax.scatter(x * fx, y * fy, c=values, norm=norm, cmap=cmap, s=14,
                        plotnonfinite=True)
        ax.set_ylabel(axis_label(params[1], result.units[params[1]], y))
    else:
        sc = ax.scatter(x * fx, values, c=values, norm=norm, cmap=cmap, s=14)
        ax.axhline(0.0 if metric == "bias_over_sqrt_crb" else 1.0, color="k", lw=0.8, ls="--")
        if np.all(x > 0) and x.max() > 20 * x.min():   # samples over decades: log axis
            ax.set_xscale("log")
            _plain_log_ticks(ax.xaxis)
        ax.set_ylabel(METRIC_LABELS[metric])
    ax.set_xlabel(axis_label(params[0], result.units[params[0]], x))
    _colorbar(fig, sc, ax, metric)
