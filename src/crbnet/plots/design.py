"""Sequence design figure: the controls before and after, and the relative √CRB per tissue
point and parameter before and after."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from crbnet.physics.sequences import FISPSequence, MTSequence, Sequence
from crbnet.plots import save_figure, subplots


def _trains(seq: Sequence) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(label, time s, values) of the controls a person wants to see."""
    if isinstance(seq, MTSequence):
        t = np.arange(seq.n_timepoints) * seq.TR
        return [("flip angle α = 2θ (deg)", t, np.rad2deg(2 * seq.theta)),
                ("pulse duration TRF (µs)", t, seq.TRF * 1e6)]
    if isinstance(seq, FISPSequence):
        t = np.concatenate(([0.0], np.cumsum(seq.TR)[:-1])) + seq.TI
        return [("flip angle (deg)", t, np.rad2deg(seq.flip)), ("TR (ms)", t, seq.TR * 1e3)]
    raise TypeError(f"no design figure for {type(seq).__name__}")


def plot_design(report: dict, start: Sequence, result: Sequence, path: str | Path) -> None:
    """Three panels: the two control trains of start and result, and a bar chart of the
    relative √CRB (%) per point and parameter, start vs result."""
    fig, axes = subplots(1, 3, figsize=(16, 4.4))
    for k, ax in enumerate(axes[:2]):
        for seq, style, name in ((start, "C7-", "start"), (result, "C3-", "designed")):
            label, t, values = _trains(seq)[k]
            ax.plot(t, values, style, lw=1.1, label=name)
        ax.set_xlabel("time (s)")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_title(f"controls (start: {report['settings']['start']})")
    axes[1].set_title("cost {:.3g} → {:.3g} ({:.2f}×)".format(
        report["start"]["cost"], report["result"]["cost"],
        report["result"]["cost"] / report["start"]["cost"]))
    ax = axes[2]
    params = report["parameters"]
    labels = list(report["result"]["per_point"])
    width = 0.8 / (2 * len(labels))
    x = np.arange(len(params))
    for i, label in enumerate(labels):
        for j, (which, alpha) in enumerate((("start", 0.45), ("result", 1.0))):
            values = [100 * report[which]["per_point"][label][p]["relative_sqrt_crb"]
                      for p in params]
            ax.bar(x + (2 * i + j - len(labels) + 0.5) * width, values, width, alpha=alpha,
                   color=f"C{i}", label=f"{label} {'designed' if j else 'start'}")
    ax.set_xticks(x, params)
    ax.set_yscale("log")
    ax.set_ylabel("√CRB / value (%)")
    ax.set_title(f"relative √CRB at SNR {report['snr']:g}")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


__all__ = ["plot_design"]
