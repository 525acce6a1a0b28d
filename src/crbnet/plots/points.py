"""Figure of a tissue-point study: bias/√CRB and std/√CRB (± one standard error) per parameter,
against the SNR — or against the swept parameter's value for a sweep. Dashed lines mark the
ideal: zero bias, std equal to the bound."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from crbnet.plots import save_figure, subplots

if TYPE_CHECKING:  # pragma: no cover
    from crbnet.assessment.point_study import PointStudy

_ROWS = (("bias_over_sqrt_crb", "bias / √CRB", 0.0), ("std_over_sqrt_crb", "std / √CRB", 1.0))


def _series(study: "PointStudy"):
    """(label, x values, stat key -> list of (estimate arrays)) per line of every panel."""
    names = study.points.names
    if study.points.sweep is None:
        for label in study.labels:
            for g, name in enumerate(names):
                yield f"{label}, {name}", np.array(study.snrs), [
                    study.stats[label][snr] for snr in study.snrs], [g] * len(study.snrs)
        return
    j = study.parameters.index(study.points.sweep)
    bases = list(dict.fromkeys(n.split(":")[0] for n in names))
    for label in study.labels:
        for snr in study.snrs:
            s = study.stats[label][snr]
            for base in bases:
                idx = [g for g, n in enumerate(names) if n.split(":")[0] == base]
                yield (f"{label}, {base}, SNR {snr:g}", s["theta"][idx, j],
                       [s] * len(idx), idx)


def plot_point_study(study: "PointStudy", path: str | Path) -> None:
    P = len(study.parameters)
    fig, axes = subplots(2, P, figsize=(3.0 * P + 1, 6.2), squeeze=False)
    for label, x, per_x, rows in _series(study):
        for r, (key, _, _) in enumerate(_ROWS):
            for j in range(P):
                y = np.array([s[key][g, j] for s, g in zip(per_x, rows)])
                err = np.array([s[key + "_se"][g, j] for s, g in zip(per_x, rows)])
                axes[r, j].errorbar(x, y, yerr=err, marker="o", ms=3, capsize=2, label=label)
    for r, (_, ylabel, ideal) in enumerate(_ROWS):
        for j, p in enumerate(study.parameters):
            ax = axes[r, j]
            ax.axhline(ideal, color="k", ls="--", lw=0.8)
            if study.points.sweep is None:
                ax.set_xscale("log")
                ax.set_xlabel("SNR")
            else:
                ax.set_xlabel(f"{study.points.sweep} ({study.units.get(study.points.sweep, '')})")
            if r == 0:
                ax.set_title(p)
            if j == 0:
                ax.set_ylabel(ylabel)
    axes[0, 0].legend(fontsize=7, loc="best")
    fig.suptitle(f"{study.model}: {study.realizations} realizations per point "
                 f"(error bars: one standard error)")
    fig.tight_layout()
    save_figure(fig, path)
