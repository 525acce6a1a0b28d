"""Figure of a tissue-point study: bias/√CRB and std/√CRB (± one standard error) per parameter.
Dashed lines mark the ideal: zero bias, std equal to the bound.

What the x axis holds depends on what varies, so that no two series sit on top of each other:

- one SNR: the tissue points side by side, the estimators as neighbouring markers at each point
  (colour = estimator);
- several SNRs: the SNR (log axis, ticks at the SNRs studied), colour = estimator and marker =
  tissue point;
- a sweep: the swept parameter's value, one line per estimator, point and SNR.

The legend sits below the panels, never over the data.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.lines import Line2D

from crbnet.plots import save_figure, subplots

if TYPE_CHECKING:  # pragma: no cover
    from crbnet.assessment.point_study import PointStudy

_ROWS = (("bias_over_sqrt_crb", "bias / √CRB", 0.0), ("std_over_sqrt_crb", "std / √CRB", 1.0))
_MARKERS = "osD^v<>pXh*"
_WIDTH_PER_PANEL = 2.9     # inches: readable panels at 120 dpi with 8-pt labels


def _colour(i: int) -> str:
    return f"C{i % 10}"


def _figure(study: "PointStudy", width_per_panel: float = _WIDTH_PER_PANEL) -> tuple[Any, Any]:
    P = len(study.parameters)
    return subplots(2, P, figsize=(width_per_panel * P + 0.8, 5.6), squeeze=False,
                    sharex="col", layout="constrained")


def _values(study: "PointStudy", label: str, snr: float, key: str, g: Any, j: int):
    s = study.stats[label][snr]
    return s[key][g, j], s[key + "_se"][g, j]


def _by_point(study: "PointStudy", axes: Any) -> list[Any]:
    """One SNR: points along x, estimators side by side at each."""
    snr = study.snrs[0]
    names, labels = study.points.names, study.labels
    x = np.arange(len(names))
    step = min(0.8 / max(len(labels), 1), 0.22)
    for i, label in enumerate(labels):
        offset = (i - (len(labels) - 1) / 2) * step
        for r, (key, _, _) in enumerate(_ROWS):
            for j in range(len(study.parameters)):
                y, err = _values(study, label, snr, key, slice(None), j)
                axes[r, j].errorbar(x + offset, y, yerr=err, fmt=_MARKERS[0], ms=4, capsize=2,
                                    color=_colour(i), lw=1.2)
    for ax in axes[1]:
        ax.set_xticks(x, names, rotation=30 if len(names) > 4 else 0,
                      ha="right" if len(names) > 4 else "center")
        ax.set_xlim(-0.6, len(names) - 0.4)
    for ax in axes.flat:
        ax.grid(True, axis="y", alpha=0.3)
    return [Line2D([], [], color=_colour(i), marker=_MARKERS[0], ls="", label=label)
            for i, label in enumerate(labels)]


def _by_snr(study: "PointStudy", axes: Any) -> list[Any]:
    """Several SNRs: SNR along x (log), colour = estimator, marker = point."""
    names, labels, snrs = study.points.names, study.labels, np.array(study.snrs)
    for i, label in enumerate(labels):
        for g, _ in enumerate(names):
            for r, (key, _, _) in enumerate(_ROWS):
                for j in range(len(study.parameters)):
                    pairs = [_values(study, label, snr, key, g, j) for snr in study.snrs]
                    y, err = (np.array(v) for v in zip(*pairs))
                    axes[r, j].errorbar(snrs, y, yerr=err, color=_colour(i),
                                        marker=_MARKERS[g % len(_MARKERS)], ms=4, capsize=2,
                                        lw=1.1, alpha=0.9)
    for ax in axes.flat:
        ax.set_xscale("log")
        ax.set_xticks(snrs, [f"{s:g}" for s in snrs])
        ax.xaxis.set_minor_formatter("")
        ax.grid(True, alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("SNR")
    return ([Line2D([], [], color=_colour(i), lw=2, label=label) for i, label in enumerate(labels)]
            + [Line2D([], [], color="0.3", marker=_MARKERS[g % len(_MARKERS)], ls="", label=name)
               for g, name in enumerate(names)])


def _by_sweep(study: "PointStudy", axes: Any) -> list[Any]:
    """A sweep: the swept value along x, one line per estimator, point and SNR."""
    names, sweep = study.points.names, study.points.sweep
    j_sweep = study.parameters.index(sweep)
    bases = list(dict.fromkeys(n.split(":")[0] for n in names))
    handles = []
    k = 0
    for label in study.labels:
        for snr in study.snrs:
            for base in bases:
                idx = [g for g, n in enumerate(names) if n.split(":")[0] == base]
                x = study.stats[label][snr]["theta"][idx, j_sweep]
                for r, (key, _, _) in enumerate(_ROWS):
                    for j in range(len(study.parameters)):
                        y, err = _values(study, label, snr, key, idx, j)
                        axes[r, j].errorbar(x, y, yerr=err, color=_colour(k), marker="o", ms=3,
                                            capsize=2, lw=1.1)
                handles.append(Line2D([], [], color=_colour(k), marker="o", ms=3,
                                      label=f"{label}, {base}, SNR {snr:g}"))
                k += 1
    unit = study.units.get(sweep, "")
    for ax in axes[1]:
        ax.set_xlabel(f"{sweep} ({unit})" if unit else sweep)
    for ax in axes.flat:
        ax.grid(True, alpha=0.3)
    return handles


def plot_point_study(study: "PointStudy", path: str | Path) -> None:
    """bias/√CRB (top row) and std/√CRB (bottom row), one column per parameter."""
    fig, axes = _figure(study)
    if study.points.sweep is not None:
        handles = _by_sweep(study, axes)
    elif len(study.snrs) == 1:
        handles = _by_point(study, axes)
    else:
        handles = _by_snr(study, axes)
    for r, (_, ylabel, ideal) in enumerate(_ROWS):
        axes[r, 0].set_ylabel(ylabel)
        for j, p in enumerate(study.parameters):
            axes[r, j].axhline(ideal, color="k", ls="--", lw=0.8)
            if r == 0:
                axes[r, j].set_title(p)
    ncol = min(len(handles), 6 if len(study.parameters) > 2 else 3)
    fig.legend(handles=handles, loc="outside lower center", ncol=ncol, fontsize=9,
               frameon=False)
    snr = f", SNR {study.snrs[0]:g}" if len(study.snrs) == 1 else ""
    fig.suptitle(f"{study.model}: {study.realizations} realizations per point{snr} "
                 "(error bars: one standard error)", fontsize=10)
    save_figure(fig, path)


__all__ = ["plot_point_study"]
