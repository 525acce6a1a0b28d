"""From the estimates on the grid to the maps ``crbnet apply`` writes: parameters, CRB
standard deviations at the measured noise level, M0 magnitude and phase, the residual noise
level and the range-edge flags."""

from __future__ import annotations

import numpy as np

from crbnet.imaging import goodness_of_fit
from crbnet.imaging.estimation_pass import Estimates
from crbnet.imaging.estimator_ranges import edge_flags
from crbnet.imaging.noise_level import NoiseLevel
from crbnet.physics.models.base import SignalModel


def map_name(model: SignalModel, parameter: str) -> str:
    """File name stem of a parameter's map: the model's name for it
    (:attr:`~crbnet.physics.models.base.ParameterSpec.map_name`, e.g. ``T1`` → ``T1map``), else the
    parameter's name (``T1f`` → ``T1f``)."""
    return model.map_name(parameter)


def parameter_maps(est: Estimates, noise: NoiseLevel, model: SignalModel, names: list[str],
                   ranges: dict[str, tuple[float, float]]
                   ) -> tuple[dict[str, np.ndarray], dict[str, int], np.ndarray]:
    """(maps by file stem, singular-CRB voxels per parameter, range-edge flags [*grid, P])."""
    used = est.used
    maps: dict[str, np.ndarray] = {name: est.theta[..., j] for j, name in enumerate(names)}
    n_singular: dict[str, int] = {}
    if est.std_unit is not None:
        for j, name in enumerate(names):
            std = est.std_unit[..., j] * noise.sigma_map
            maps[f"{name}_CRBstd"] = np.where(used, std, 0.0)
            n_singular[model.parameters[j]] = int((used & ~np.isfinite(std)).sum())
    at_edge = edge_flags(est.theta, model, ranges) & used[..., None]
    maps["flags"] = (at_edge * (1 << np.arange(model.n_parameters))).sum(-1)
    maps["M0map"] = np.abs(est.m0)
    maps["M0phase"] = np.where(used, np.angle(est.m0), 0.0)
    maps["sigma_residual"] = np.where(used, np.nan_to_num(noise.residual_map, nan=0.0), 0.0)
    maps[goodness_of_fit.MAP_NAME] = goodness_of_fit.for_noise(noise, used)[0]
    return maps, n_singular, at_edge
