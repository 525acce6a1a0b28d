"""The estimation pass of ``crbnet apply``: read the data block by block, estimate every voxel
of the mask chunk by chunk, and hold the results on the grid."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from crbnet import progress as progress_contract
from crbnet.errors import InputError
from crbnet.estimators.protocol import Estimator
from crbnet.imaging.chunk_estimates import ChunkResult, estimate_chunk
from crbnet.imaging.signal_sources import SignalSource
from crbnet.imaging.noise_level import noise_power
from crbnet.imaging.stage_times import StageTimes
from crbnet.physics.models.base import SignalModel
from crbnet.progress import ProgressFactory


@dataclass
class PassSettings:
    """How the pass runs: voxels per estimator call, where simulation and CRB run, whether
    the CRB is computed, the memory budget of one read block (bytes) and the progress bars."""

    chunk_size: int
    device: torch.device
    uncertainty: bool
    max_bytes: int
    progress: ProgressFactory | None = None


@dataclass
class Estimates:
    """Everything the estimation pass found, on the grid."""

    theta: np.ndarray            # [*grid, P] float32
    std_unit: np.ndarray | None  # [*grid, P] float32, √CRB for σ = 1
    m0: np.ndarray               # [*grid] complex128
    sigma2: np.ndarray           # [*grid] residual variance
    used: np.ndarray             # [*grid] bool: estimated
    nonfinite: np.ndarray        # [*grid] bool: NaN/Inf data
    failed: np.ndarray           # [*grid] bool: non-finite estimate
    out_of_bounds: np.ndarray    # [P] counts
    background_power: np.ndarray | None  # [*grid] ‖y‖²/2T outside the mask (given mask only)

    @classmethod
    def empty(cls, shape: tuple[int, ...], P: int, uncertainty: bool,
              gather_background: bool) -> "Estimates":
        # Maps are held as float32 (as written): a 256×256×64 volume's maps stay small.
        return cls(theta=np.zeros(shape + (P,), dtype=np.float32),
                   std_unit=np.full(shape + (P,), np.nan, np.float32) if uncertainty else None,
                   m0=np.zeros(shape, dtype=np.complex128), sigma2=np.full(shape, np.nan),
                   used=np.zeros(shape, dtype=bool), nonfinite=np.zeros(shape, dtype=bool),
                   failed=np.zeros(shape, dtype=bool), out_of_bounds=np.zeros(P, np.int64),
                   background_power=np.full(shape, np.nan) if gather_background else None)

    def store(self, block: tuple[slice, ...], where: np.ndarray,
              results: list[ChunkResult]) -> None:
        """Write the chunks' results at the voxels ``where`` (bool, block shape) of ``block``."""
        ok = np.concatenate([r.ok for r in results])
        self.out_of_bounds += np.concatenate([r.out_of_bounds for r in results]).sum(0)
        self.theta[block][where] = np.concatenate([r.theta for r in results])
        self.m0[block][where] = np.concatenate([r.m0 for r in results])
        self.sigma2[block][where] = np.concatenate([r.sigma2 for r in results])
        if self.std_unit is not None:
            self.std_unit[block][where] = np.concatenate([r.std_unit for r in results])
        ok_local = np.zeros(where.shape, dtype=bool)
        ok_local[where] = ok
        self.failed[block] |= where & ~ok_local
        self.used[block] |= ok_local

    def clear_unused(self) -> None:
        """Voxels not estimated hold 0 (NaN for σ̂² and the CRB)."""
        self.theta[~self.used] = 0.0
        self.m0[~self.used] = 0.0
        self.sigma2[~self.used] = np.nan
        if self.std_unit is not None:
            self.std_unit[~self.used] = np.nan


def _estimate_block(estimator: Estimator, model: SignalModel, data: np.ndarray,
                    bmask: np.ndarray, out: Estimates, block: tuple[slice, ...],
                    settings: PassSettings, times: StageTimes, bar: Any) -> None:
    """Estimate the masked voxels of one read block of data and store them in ``out``."""
    y = data[bmask]
    finite = np.isfinite(y).all(-1)
    bad_local = np.zeros(bmask.shape, dtype=bool)
    bad_local[bmask] = ~finite
    out.nonfinite[block] |= bad_local
    y = y[finite]
    chunk = settings.chunk_size
    results = []
    for start in range(0, y.shape[0], chunk):
        results.append(estimate_chunk(estimator, model, y[start:start + chunk],
                                      settings.device, settings.uncertainty, times))
        bar.update(results[-1].ok.size)
    bar.update(int((~finite).sum()))
    if results:
        out.store(block, bmask & ~bad_local, results)


def estimation_pass(estimator: Estimator, model: SignalModel, source: SignalSource,
                    mask: np.ndarray, gather_background: bool, settings: PassSettings,
                    times: StageTimes) -> Estimates:
    """Read the data block by block and estimate every voxel of ``mask``; with
    ``gather_background`` also the noise power of the voxels outside it (one read of the data
    instead of two)."""
    out = Estimates.empty(source.spatial_shape, model.n_parameters, settings.uncertainty,
                          gather_background)
    bars = progress_contract.resolve(settings.progress)
    with bars(total=int(mask.sum()), unit="voxel", desc=f"{estimator.name}") as bar:
        for block in source.blocks(settings.max_bytes):
            bmask = mask[block]
            if not bmask.any() and not gather_background:
                continue
            with times.stage("read"):
                data = source.read(block)
                if gather_background and not bmask.all():
                    out.background_power[block][~bmask] = noise_power(data[~bmask])
            if bmask.any():
                _estimate_block(estimator, model, data, bmask, out, block, settings, times, bar)
    if not out.used.any():
        raise InputError("no voxel could be estimated (all masked voxels have NaN/Inf data or "
                         "failed estimates)")
    out.clear_unused()
    return out
