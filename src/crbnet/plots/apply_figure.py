"""``maps.png`` of ``crbnet apply``: the parameter maps, their CRB standard deviations, M0
magnitude and phase, the residual noise level and the goodness of fit of one run, drawn from what
:func:`crbnet.imaging.apply.apply_to_volume` returns (the library draws nothing itself; the
command line passes :func:`draw_apply_maps` as its figure writer)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from crbnet.plots.maps import plot_parameter_maps


def draw_apply_maps(result: Any, path: str | Path) -> None:
    """Draw ``result``'s maps (an :class:`~crbnet.imaging.apply.ApplyResult`) to ``path``: the
    parameter maps, their CRB standard deviations (when computed), |M0|, its phase, σ̂_v and
    the goodness of fit; the title names the model, estimator and noise level. With three or
    more parameters the maps and their CRB standard deviations get a row each (a map above its
    uncertainty); with fewer, everything is packed four to a row so no panel is left empty."""
    summary, maps = result.summary, result.maps
    names = [result.map_names[p] for p in summary["parameters"]]
    units = {result.map_names[p]: summary["units"][p] for p in summary["parameters"]}
    groups = [names]
    if summary["uncertainty"] is not None:
        groups.append([f"{n}_CRBstd" for n in names])
        units.update({f"{n}_CRBstd": units[n] for n in names})
    extra = [n for n in ("M0map", "M0phase", "sigma_residual", "goodness_of_fit") if n in maps]
    units.update({"M0map": "a.u.", "M0phase": "rad", "sigma_residual": "a.u.",
                  "goodness_of_fit": ""})
    if len(names) >= 3:
        rows = [*groups, extra]
    else:
        panels = [n for group in (*groups, extra) for n in group]
        rows = [panels[i:i + 4] for i in range(0, len(panels), 4)]
    shown = {n: maps[n] for row in rows for n in row}
    method = summary["noise"]["method"]
    sigma = summary["noise"]["sigma"] or float("nan")
    sig = f"σ = {sigma:.4g} ({method})" if method != "voxel" else "σ per voxel (residual)"
    plot_parameter_maps(shown, units, path, mask=result.mask, rows=rows,
                        title=f"{summary['model']} — {summary['estimator']}; {sig}")
