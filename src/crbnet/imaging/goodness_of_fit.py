"""Goodness of fit per voxel: how far each voxel's residual is from what noise alone leaves.

``crbnet apply`` already writes the residual noise level ``σ̂_v = sqrt(‖y − M0̂ f(θ̂)‖² / d)``
(d = 2T − P − 2 degrees of freedom: 2T real data points, P parameters and the complex M0). The
goodness-of-fit map divides it by the noise level σ the uncertainty maps use:

    g_v = σ̂_v / σ = sqrt(χ²_v / d),    χ²_v = ‖y − M0̂ f(θ̂)‖² / σ²,

the square root of the reduced χ². Where the model describes the voxel and the estimate is the
least-squares one, ``χ²_v`` follows a χ² law with d degrees of freedom and g_v scatters around 1
(its median is ``sqrt(median(χ²_d) / d)``, a little below 1 for small d); a systematic misfit
(wrong physics, artefacts, an estimator away from the least-squares point) raises it. Because σ
itself is, with ``--noise residual`` or ``auto`` on coefficient images, the median of the σ̂_v
rescaled to that χ² median, the map then reads "residual relative to the typical voxel": its
median over the mask is ``sqrt(median(χ²_d) / d)`` by construction (0.983 for d = 20), and the
spread and the outliers carry the message.
With ``--noise voxel`` (σ = σ̂_v in every voxel) g would be 1 everywhere, so the map uses the
median residual level instead, and says so.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

#: File stem of the map.
MAP_NAME = "goodness_of_fit"


def reference_sigma(method: str, sigma: float, residual_sigma: float) -> tuple[float, str]:
    """The σ the map divides by, and what it is: the σ of the uncertainty maps, except for
    per-voxel noise (``method == 'voxel'``), where that would make the map identically 1 and
    the median residual level is used."""
    if method == "voxel":
        return residual_sigma, "residual"
    return sigma, method


def goodness_of_fit_map(residual_map: np.ndarray, used: np.ndarray, sigma: float) -> np.ndarray:
    """``σ̂_v / σ`` in the estimated voxels (``used``), 0 elsewhere (as the other maps)."""
    if not (math.isfinite(sigma) and sigma > 0):
        return np.zeros(residual_map.shape, dtype=float)
    ratio = np.nan_to_num(residual_map / sigma, nan=0.0, posinf=0.0)
    return np.where(used, ratio, 0.0)


def goodness_of_fit_summary(gof: np.ndarray, used: np.ndarray, sigma: float, source: str,
                            dof: int) -> dict[str, Any]:
    """Median, quartiles and the 95th percentile of the map over the estimated voxels, with the
    σ it is relative to (for ``apply.json``)."""
    values = gof[used]
    values = values[np.isfinite(values) & (values >= 0)]
    if values.size == 0 or not math.isfinite(sigma):
        return {"map": f"{MAP_NAME}.nii.gz", "sigma": None, "sigma_source": source,
                "median": None, "q1": None, "q3": None, "p95": None}
    q1, median, q3, p95 = (float(v) for v in np.percentile(values, [25, 50, 75, 95]))
    return {"map": f"{MAP_NAME}.nii.gz", "sigma": float(sigma), "sigma_source": source,
            "definition": "sqrt(|y - M0 f(theta)|^2 / (dof * sigma^2)), the square root of the "
                          "reduced chi-square; ~1 where only noise is left",
            "dof": int(dof), "median": median, "q1": q1, "q3": q3, "p95": p95}


def sidecar(summary: dict[str, Any]) -> dict[str, Any]:
    """The map's JSON sidecar."""
    g = summary["goodness_of_fit"]
    return {"Units": "1", "Description": "residual norm over the noise: " + str(
        g.get("definition", "sqrt(reduced chi-square)")), "Sigma": g["sigma"],
            "SigmaSource": g["sigma_source"], "DegreesOfFreedom": g.get("dof")}




def for_noise(noise: Any, used: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """The map and its summary for apply's noise estimate ``noise`` (with ``method``,
    ``sigma``, ``residual_sigma``, ``residual_map`` and ``dof``)."""
    sigma, source = reference_sigma(noise.method, noise.sigma, noise.residual_sigma)
    gof = goodness_of_fit_map(noise.residual_map, used, sigma)
    return gof, goodness_of_fit_summary(gof, used, sigma, source, noise.dof)


__all__ = ["MAP_NAME", "reference_sigma", "goodness_of_fit_map", "goodness_of_fit_summary",
           "sidecar", "for_noise"]
