"""The content of ``apply.json``: what was estimated with what, how many voxels of each kind,
the noise level and the SNR."""

from __future__ import annotations

from typing import Any

import numpy as np

from crbnet import __version__
from crbnet.estimators.protocol import Estimator
from crbnet.files import json_ready
from crbnet.imaging import goodness_of_fit
from crbnet.imaging.estimation_pass import Estimates
from crbnet.imaging.estimator_ranges import EDGE_FRACTION
from crbnet.imaging.signal_sources import SignalSource
from crbnet.imaging.noise_level import NoiseLevel
from crbnet.physics.models.base import SignalModel
from crbnet.physics.sequences import sequence_hash
from crbnet.stats.noise import SNR_DEFINITION


def summary(estimator: Estimator, model: SignalModel, source: SignalSource, est: Estimates,
            noise: NoiseLevel, mask: np.ndarray, auto_mask: bool, n_singular: dict[str, int],
            at_edge: np.ndarray, ranges: dict[str, tuple[float, float]],
            uncertainty: bool) -> dict[str, Any]:
    """The content of ``apply.json`` as plain JSON values (NaN as None); ``seconds``,
    ``seconds_by_stage`` and ``files`` are filled in when it is written."""
    basis = model.describe().get("basis")
    return json_ready({
        "crbnet_version": __version__,
        "estimator": estimator.name,
        "estimator_type": type(estimator).__name__,
        # Its settings as it states them (a dictionary: atoms, rank, refinement).
        "estimator_settings": repr(estimator),
        "model": model.name,
        "parameters": list(model.parameters),
        "units": model.units,
        "fixed": model.fixed,
        "sequence_hash": sequence_hash(model.sequence),
        "input": source.description,
        "grid": list(source.spatial_shape),
        "n_timepoints": source.n_timepoints,
        "voxels": _voxel_counts(model, est, mask, auto_mask, n_singular, at_edge),
        "estimator_ranges": {p: list(r) for p, r in ranges.items()},
        "range_edge_definition": f"estimate within {EDGE_FRACTION:g} of the estimator's range "
                                 "width of either end (log scale for log-uniform parameters), or "
                                 "outside; flags.nii.gz bit j (value 2^j) = parameter j",
        "basis": basis,
        "noise": _noise_report(est, noise),
        "snr": {
            "mean_abs_m0_over_sigma": _mean_snr(est, noise),
            "definition": SNR_DEFINITION + " (mean |M0| over the estimated voxels)",
        },
        "goodness_of_fit": goodness_of_fit.for_noise(noise, est.used)[1],
        "uncertainty": ("sqrt(CRB) at the estimated parameters and |M0|, scaled by the noise "
                        "level (docs/statistics.md §2)"
                        + (" — the CRB of the subspace coefficients" if basis else "")
                        + "; NaN where the Fisher matrix is singular") if uncertainty else None,
        "seconds": None,
        "seconds_by_stage": None,
    })


def _voxel_counts(model: SignalModel, est: Estimates, mask: np.ndarray, auto_mask: bool,
                  n_singular: dict[str, int], at_edge: np.ndarray) -> dict[str, Any]:
    spatial_axes = tuple(range(mask.ndim))
    return {
        "in_grid": int(np.prod(mask.shape)),
        "in_mask": int(mask.sum()),
        "mask_source": "automatic (subspace energy test)" if auto_mask else "given",
        "nonfinite_input": int(est.nonfinite.sum()),
        "failed_estimates": int(est.failed.sum()),
        "estimated": int(est.used.sum()),
        "out_of_bounds": dict(zip(model.parameters, (int(v) for v in est.out_of_bounds))),
        "crb_singular": n_singular,
        "at_range_edge": dict(zip(model.parameters,
                                  (int(v) for v in at_edge.sum(spatial_axes)))),
    }


def _noise_report(est: Estimates, noise: NoiseLevel) -> dict[str, Any]:
    used = est.used
    ratio = noise.residual_map[used] / noise.sigma_map[used]
    return {
        "method": noise.method,
        "sigma": None if noise.method == "voxel" else noise.sigma,
        "sigma_definition": "std of the real and of the imaginary part of the noise",
        "sigma_background": noise.background_sigma,
        "background_voxels": noise.background_voxels,
        "sigma_residual_median": noise.residual_sigma,
        "sigma_complement": None,
        "residual_dof": noise.dof,
        "median_residual_to_sigma": float(np.nanmedian(ratio)),
    }


def _mean_snr(est: Estimates, noise: NoiseLevel) -> float:
    """mean |M0| / σ over the estimated voxels (each voxel's own σ̂_v for ``voxel``)."""
    used = est.used
    if noise.method == "voxel":
        return float(np.nanmean(np.abs(est.m0[used]) / noise.residual_map[used]))
    return float(np.abs(est.m0[used]).mean()) / noise.sigma
