"""The noise level σ of ``crbnet apply``: the standard deviation of the real and of the
imaginary part of the noise, by mode (``given``, ``background``, ``residual``, ``voxel``; see
:mod:`crbnet.imaging.apply` for the formulas)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from crbnet.errors import InputError

NOISE_MODES = ("auto", "background", "residual", "voxel")
MIN_BACKGROUND_VOXELS = 100


def chi2_median_ratio(dof: float) -> float:
    """Median of χ²_ν / ν (Wilson–Hilferty; relative error < 1e-3 for ν ≥ 2)."""
    return (1 - 2 / (9 * dof)) ** 3


def noise_power(data: np.ndarray) -> np.ndarray:
    """‖y‖² / 2T per voxel of ``data`` [n, T] (NaN where not finite)."""
    ok = np.isfinite(data).all(-1)
    values = np.full(data.shape[0], np.nan)
    values[ok] = (np.abs(data[ok]) ** 2).sum(-1) / (2 * data.shape[-1])
    return values


def background_sigma(power: np.ndarray, background: np.ndarray, n_timepoints: int
                     ) -> tuple[float, int]:
    """σ from noise-only voxels: sqrt(median(‖y‖²/2T) / m(2T)); returns (σ, voxels used).
    Voxels that are exactly zero are no noise samples (a reconstruction zero-filled them
    outside its own mask, as in subspace coefficient images) and are left out: with fewer than
    :data:`MIN_BACKGROUND_VOXELS` left, ``noise="auto"`` takes σ from the residuals."""
    values = power[background & np.isfinite(power) & (power > 0)]
    if values.size < MIN_BACKGROUND_VOXELS:
        return float("nan"), int(values.size)
    sigma2 = np.median(values) / chi2_median_ratio(2 * n_timepoints)
    return float(math.sqrt(sigma2)), int(values.size)


@dataclass
class NoiseLevel:
    """The noise level a run uses and the estimates it was chosen from."""

    method: str                  # given, background, residual or voxel
    sigma: float                 # the σ used (NaN for voxel)
    sigma_map: np.ndarray        # [*grid] σ per estimated voxel (NaN elsewhere)
    residual_map: np.ndarray     # [*grid] σ̂_v
    residual_sigma: float        # median residual estimate (NaN if no dof)
    background_sigma: float
    background_voxels: int
    dof: int


def noise_level(sigma2: np.ndarray, used: np.ndarray,
                background: tuple[np.ndarray, np.ndarray] | None, T: int, P: int,
                sigma: float | None, noise: str) -> NoiseLevel:
    """The noise level the uncertainty maps use, by ``noise`` mode.

    Args:
        sigma2: [*grid] each voxel's residual variance σ̂_v² (NaN where not estimated).
        used: [*grid] bool, the estimated voxels.
        background: (‖y‖²/2T per voxel, bool grid of the noise-only voxels), or None when the
            background was not gathered.
        T: data points per voxel (time points or coefficients); P: estimated parameters.
        sigma: a given σ (used as is), or None.
        noise: ``auto``, ``background``, ``residual`` or ``voxel``.
    """
    dof = 2 * T - P - 2
    residual_map = np.sqrt(sigma2)
    residual_sigma = float("nan")
    if dof > 0:
        residual_sigma = float(math.sqrt(np.nanmedian(sigma2[used]) / chi2_median_ratio(dof)))
    bg_sigma, bg_voxels = float("nan"), 0
    if background is not None:
        bg_sigma, bg_voxels = background_sigma(background[0], background[1], T)
    if sigma is not None:
        method, used_sigma = "given", float(sigma)
    elif noise == "background" or (noise == "auto" and math.isfinite(bg_sigma)):
        if not math.isfinite(bg_sigma):
            raise InputError(f"background noise needs at least {MIN_BACKGROUND_VOXELS} finite "
                             f"voxels outside the mask, found {bg_voxels}; use --noise residual "
                             "or --sigma")
        method, used_sigma = "background", bg_sigma
    elif noise in ("auto", "residual"):
        if not math.isfinite(residual_sigma):
            raise InputError("the residual noise estimate needs 2T > P + 2 time points; give "
                             "--sigma")
        method, used_sigma = "residual", residual_sigma
    else:  # voxel
        if dof <= 0:
            raise InputError("per-voxel residual noise needs 2T > P + 2 time points; give "
                             "--sigma")
        method, used_sigma = "voxel", float("nan")
    sigma_map = residual_map if method == "voxel" else np.where(used, used_sigma, np.nan)
    return NoiseLevel(method=method, sigma=used_sigma, sigma_map=sigma_map,
                      residual_map=residual_map, residual_sigma=residual_sigma,
                      background_sigma=bg_sigma, background_voxels=bg_voxels, dof=dof)
