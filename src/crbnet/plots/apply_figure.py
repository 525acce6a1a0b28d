"""``maps.png`` of ``crbnet apply``: the parameter maps, their CRB standard deviations, M0
magnitude and phase and the residual noise level of one run, drawn from what
:func:`crbnet.imaging.apply.apply_to_volume` returns (the library draws nothing itself; the
command line passes :func:`draw_apply_maps` as its figure writer)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from crbnet.plots.maps import plot_parameter_maps


def draw_apply_maps(result: Any, path: str | Path) -> None:
    """Draw ``result``'s maps (an :class:`~crbnet.imaging.apply.ApplyResult`) to ``path``:
    one row of parameter maps, one of their CRB standard deviations (when computed), then
    |M0|, its phase and σ̂_v; the title names the model, estimator and noise level."""
    summary, maps = result.summary, result.maps
    names = [result.map_names[p] for p in summary["parameters"]]
    units = {result.map_names[p]: summary["units"][p] for p in summary["parameters"]}
    rows = [names]
    if summary["uncertainty"] is not None:
        rows.append([f"{n}_CRBstd" for n in names])
        units.update({f"{n}_CRBstd": units[n] for n in names})
    rows.append(["M0map", "M0phase", "sigma_residual"])
    units.update({"M0map": "a.u.", "M0phase": "rad", "sigma_residual": "a.u."})
    shown = {n: maps[n] for row in rows for n in row}
    method = summary["noise"]["method"]
    sigma = summary["noise"]["sigma"] or float("nan")
    sig = f"σ = {sigma:.4g} ({method})" if method != "voxel" else "σ per voxel (residual)"
    plot_parameter_maps(shown, units, path, mask=result.mask, rows=rows,
                        title=f"{summary['model']} — {summary['estimator']}; {sig}")
