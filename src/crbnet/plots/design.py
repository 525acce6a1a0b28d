"""Sequence design figure: the controls before and after, and the relative √CRB before and
after — per tissue point and parameter for a few points, as distributions over the points for
many."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import ticker

from crbnet.physics.sequences import FISPSequence, MTSequence, SegmentedSequence, Sequence
from crbnet.plots import save_figure, subplots

#: Up to this many tissue points the figure shows a bar per point and parameter; above it, the
#: distribution over the points (a legend entry per point would cover the bars).
MAX_POINTS_AS_BARS = 6


def _trains(seq: Sequence) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(label, time s, values) of the controls a person wants to see."""
    if isinstance(seq, MTSequence):
        t = np.arange(seq.n_timepoints) * seq.TR
        return [("flip angle α = 2θ (deg)", t, np.rad2deg(2 * seq.theta)),
                ("pulse duration TRF (µs)", t, seq.TRF * 1e6)]
    if isinstance(seq, FISPSequence):
        t = np.concatenate(([0.0], np.cumsum(seq.TR)[:-1])) + seq.TI
        return [("flip angle (deg)", t, np.rad2deg(seq.flip)), ("TR (ms)", t, seq.TR * 1e3)]
    if isinstance(seq, SegmentedSequence):
        # Segments one after the other, as the fingerprint concatenates them.
        t = np.arange(seq.n_timepoints) * seq.require_tr()
        return [("flip angle |α| (deg)", t, np.rad2deg(np.abs(seq.alpha.ravel()))),
                ("pulse duration TRF (µs)", t, seq.TRF.ravel() * 1e6)]
    raise TypeError(f"no design figure for {type(seq).__name__}")


def _segment_bounds(seq: Sequence) -> np.ndarray:
    """Start times (s) of the segments after the first (none for unsegmented kinds)."""
    if not isinstance(seq, SegmentedSequence):
        return np.zeros(0)
    return np.arange(1, seq.n_segments) * seq.pulses_per_segment * seq.require_tr()


def _relative_std(report: dict, which: str) -> np.ndarray:
    """Relative √CRB (%) [points, parameters] of the start or the result."""
    per_point = report[which]["per_point"]
    return np.array([[100 * per_point[label][p]["relative_sqrt_crb"]
                      for p in report["parameters"]] for label in per_point])


def _bars(ax, report: dict) -> None:
    """One bar per point and parameter, start (light) and designed (full)."""
    params, labels = report["parameters"], list(report["result"]["per_point"])
    width = 0.8 / (2 * len(labels))
    x = np.arange(len(params))
    for j, (which, alpha) in enumerate((("start", 0.45), ("result", 1.0))):
        values = _relative_std(report, which)
        for i, label in enumerate(labels):
            ax.bar(x + (2 * i + j - len(labels) + 0.5) * width, values[i], width, alpha=alpha,
                   color=f"C{i}", label=f"{label} {'designed' if j else 'start'}")
    ax.set_xticks(x, params)
    ax.legend(fontsize=7, ncol=2)


def _distributions(ax, report: dict) -> None:
    """Per parameter, box plots over the points of start and designed side by side, and a
    line between the two medians."""
    params = report["parameters"]
    x = np.arange(len(params))
    medians = []
    for which, shift, color in (("start", -0.18, "C7"), ("result", 0.18, "C3")):
        values = _relative_std(report, which)
        box = ax.boxplot([values[:, j] for j in range(len(params))], positions=x + shift,
                         widths=0.3, patch_artist=True, showfliers=True,
                         medianprops={"color": "k"}, flierprops={"markersize": 3})
        for patch in box["boxes"]:
            patch.set(facecolor=color, alpha=0.6)
        medians.append(np.median(values, 0))
        ax.plot([], [], "s", color=color, alpha=0.6,
                label="start" if which == "start" else "designed")
    for j in x:
        ax.plot([j - 0.18, j + 0.18], [medians[0][j], medians[1][j]], "k:", lw=0.8)
    ax.set_xticks(x, params)
    ax.legend(fontsize=8, title=f"{len(report['result']['per_point'])} tissue points",
              title_fontsize=8)


def plot_design(report: dict, start: Sequence, result: Sequence, path: str | Path) -> None:
    """Three panels: the two control trains of start and result, and the relative √CRB (%)
    per parameter, start vs result — a bar per point for up to :data:`MAX_POINTS_AS_BARS`
    points, box plots over the points for more."""
    fig, axes = subplots(1, 3, figsize=(16, 4.4))
    for k, ax in enumerate(axes[:2]):
        for seq, style, name in ((start, "C7-", "start"), (result, "C3-", "designed")):
            label, t, values = _trains(seq)[k]
            ax.plot(t, values, style, lw=1.1, label=name)
        for t0 in _segment_bounds(result):
            ax.axvline(t0, color="k", lw=0.6, ls="--", alpha=0.5)
        ax.set_xlabel("time (s)")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_title(f"controls (start: {report['settings']['start']})")
    axes[1].set_title("cost {:.3g} → {:.3g} ({:.2f}×)".format(
        report["start"]["cost"], report["result"]["cost"],
        report["result"]["cost"] / report["start"]["cost"]))
    ax = axes[2]
    if len(report["result"]["per_point"]) <= MAX_POINTS_AS_BARS:
        _bars(ax, report)
    else:
        _distributions(ax, report)
    ax.set_yscale("log")
    # plain numbers (2, 3, 5, 10, ...) rather than 2×10⁰ on a narrow range
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(ticker.FuncFormatter(
        lambda v, _: f"{v:g}" if _few_decades(ax) else ""))
    ax.set_ylabel("√CRB / value (%)")
    ax.set_title(f"relative √CRB at SNR {report['snr']:g}")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def _few_decades(ax) -> bool:
    low, high = ax.get_ylim()
    return high / low < 20      # label the minor ticks too where the majors are too few


__all__ = ["plot_design", "MAX_POINTS_AS_BARS"]
