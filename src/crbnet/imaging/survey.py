"""The survey pass of ``crbnet apply`` without a mask: the noise power of every voxel and the
automatic mask from the model's signal subspace.

The model's signals lie close to a low-dimensional subspace U (SVD of simulated training
signals, energy 1 − 10⁻⁶). The noise level is taken from the orthogonal complement, which holds
(almost) no signal; a voxel is in the mask when its energy in the subspace exceeds what noise
alone reaches with probability :data:`AUTO_MASK_FALSE_ALARM`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from crbnet import progress as progress_contract
from crbnet.errors import InputError
from crbnet.imaging.signal_sources import SignalSource
from crbnet.imaging.noise_level import chi2_median_ratio
from crbnet.physics.models.base import SignalModel
from crbnet.progress import ProgressFactory

#: False-alarm probability of the automatic mask (per noise-only voxel).
AUTO_MASK_FALSE_ALARM = 1e-6


def model_subspace(model: SignalModel, n_signals: int = 512, seed: int = 0) -> torch.Tensor:
    """Orthonormal basis [T, k] of the model's noiseless signals over its training ranges."""
    from crbnet.stats.sampling import ParameterSampler
    from crbnet.stats.subspace import fit_subspace

    gen = torch.Generator().manual_seed(seed)
    theta = ParameterSampler(model).sample(n_signals, gen)
    with torch.no_grad():
        signals = model.simulate(theta)
    k_max = max(1, model.n_timepoints // 2)
    sub = fit_subspace(signals, energy=1 - 1e-6)
    basis = sub.basis
    return basis[:, :min(sub.k, k_max)]


@dataclass
class Survey:
    """What one read of the whole input found."""

    power: np.ndarray          # ‖y‖² / 2T per voxel (NaN where not finite)
    finite: np.ndarray         # bool
    auto_mask: np.ndarray | None
    sigma_complement: float | None


def survey(source: SignalSource, model: SignalModel, max_bytes: int, auto_mask: bool,
           progress: ProgressFactory | None = None) -> Survey:
    """Read ``source`` once: noise power per voxel and (``auto_mask``) the subspace energy
    test that makes the automatic mask."""
    shape = source.spatial_shape
    T = source.n_timepoints
    power = np.full(shape, np.nan)
    inside = np.full(shape, np.nan) if auto_mask else None
    finite = np.zeros(shape, dtype=bool)
    basis = model_subspace(model).numpy() if auto_mask else None
    n_total = int(np.prod(shape))
    bars = progress_contract.resolve(progress)
    with bars(total=n_total, unit="voxel", desc="survey") as bar:
        for block in source.blocks(max_bytes):
            data = source.read(block)
            flat = data.reshape(-1, T)
            ok = np.isfinite(flat).all(-1)
            total = np.where(ok, (np.abs(np.where(ok[:, None], flat, 0)) ** 2).sum(-1), np.nan)
            power[block] = (total / (2 * T)).reshape(data.shape[:-1])
            finite[block] = ok.reshape(data.shape[:-1])
            if basis is not None:
                proj = np.where(ok[:, None], flat, 0).astype(np.complex128) @ basis.conj()
                energy = (np.abs(proj) ** 2).sum(-1)
                inside[block] = np.where(ok, energy, np.nan).reshape(data.shape[:-1])
            bar.update(flat.shape[0])
    if not auto_mask:
        return Survey(power=power, finite=finite, auto_mask=None, sigma_complement=None)
    auto, sigma_c = _subspace_mask(power, inside, finite, T, basis.shape[1])
    return Survey(power=power, finite=finite, auto_mask=auto, sigma_complement=sigma_c)


def _subspace_mask(power: np.ndarray, inside: np.ndarray, finite: np.ndarray, T: int, k: int
                   ) -> tuple[np.ndarray, float]:
    """(mask, σ from the complement): σ² = median ‖(I − UUᴴ) y‖² / (2(T − k)) over the finite
    voxels; a voxel is in the mask where ‖Uᴴ y‖² / σ² exceeds the χ²_{2k} quantile."""
    if not finite.any():
        raise InputError("no voxel of the input has finite values")
    complement = (power * 2 * T - inside) / (2 * (T - k))
    sigma2 = np.nanmedian(complement[finite]) / chi2_median_ratio(2 * (T - k))
    if not sigma2 > 0:
        raise InputError("cannot find a noise level for the automatic mask (noise-free "
                         "data?); give --mask and --sigma")
    from scipy.stats import chi2

    threshold = chi2.isf(AUTO_MASK_FALSE_ALARM, 2 * k) * sigma2
    auto = finite & (np.nan_to_num(inside, nan=0.0) > threshold)
    return auto, float(math.sqrt(sigma2))
