"""One chunk of voxels in ``crbnet apply``: the estimates, M0, the residual variance and the
CRB standard deviation for σ = 1.

Where the CRB is wanted, :func:`crbnet.stats.crb.signal_and_crb` gives ``f(θ̂)`` with it; where
not, ``f(θ̂)`` is simulated only when some voxel's M0 and residual did not come from the
estimator's own fit (``predict_with_fit``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from crbnet.estimators.calling import checked_predict
from crbnet.estimators.protocol import Estimator, SignalFit, least_squares_m0
from crbnet.imaging.stage_times import StageTimes
from crbnet.physics.models.base import SignalModel


@dataclass
class ChunkResult:
    """What :func:`estimate_chunk` found for n voxels."""

    theta: np.ndarray          # [n, P] raw estimates
    ok: np.ndarray             # [n] finite estimate
    out_of_bounds: np.ndarray  # [n, P]
    m0: np.ndarray             # [n] complex
    sigma2: np.ndarray         # [n] residual variance estimate
    std_unit: np.ndarray | None  # [n, P] sqrt(CRB) for σ = 1 (NaN where singular)


def clip_to_bounds(model: SignalModel, theta: torch.Tensor, ok: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(outside the bounds [n, P], θ̂ clipped into the bounds with the rows that are not ``ok``
    (finite) replaced by the model's defaults [n, P])."""
    lo = torch.tensor([b[0] for b in model.bounds.values()], dtype=torch.float64)
    hi = torch.tensor([b[1] for b in model.bounds.values()], dtype=torch.float64)
    outside = ((theta < lo) | (theta > hi)) & ok[:, None]
    defaults = torch.tensor(list(model.defaults.values()), dtype=torch.float64)
    return outside, torch.where(ok[:, None], theta, defaults).clamp(lo, hi)


def m0_and_rss(y: torch.Tensor, f: torch.Tensor | None, fit: SignalFit | None,
               own_fit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Complex M0 and residual energy ``‖y − M0 f(θ̂)‖²`` per voxel [n]: the estimator's own
    fit where ``own_fit`` (its estimate was used unclipped), least squares on ``f`` elsewhere."""
    n = y.shape[0]
    m0 = torch.zeros(n, dtype=torch.complex128)
    rss = torch.zeros(n, dtype=torch.float64)
    if fit is not None:
        m0[own_fit] = fit.m0.detach().to("cpu", torch.complex128)[own_fit]
        rss[own_fit] = fit.rss.detach().to("cpu", torch.float64)[own_fit]
    rest = ~own_fit
    if rest.any():
        f_rest, y_rest = f[rest], y[rest]
        m0[rest] = least_squares_m0(f_rest, y_rest)
        rss[rest] = (y_rest - m0[rest, None] * f_rest).abs().square().sum(-1)
    return m0, rss


def estimate_chunk(estimator: Estimator, model: SignalModel, y: np.ndarray,
                   device: torch.device, uncertainty: bool, times: StageTimes) -> ChunkResult:
    """θ̂, M0, the residual variance and (``uncertainty``) √CRB for σ = 1 of voxels ``y``."""
    from crbnet.stats.crb import signal_and_crb

    n, T = y.shape
    P = model.n_parameters
    signals = torch.from_numpy(np.ascontiguousarray(y)).to(device)
    with times.stage("estimate"):
        # With the CRB, signal_and_crb simulates f(θ̂) anyway: the estimator's own fit (which
        # may simulate it too) would be the same least squares done twice.
        called = checked_predict(estimator, signals, with_fit=not uncertainty)
    theta, ok, fit = called.theta, called.finite, called.fit
    outside, clipped = clip_to_bounds(model, theta, ok)
    own_fit = (ok & ~outside.any(1)) if fit is not None else torch.zeros(n, dtype=torch.bool)
    f, std_unit = None, None
    th = clipped.to(device)
    if uncertainty:
        with times.stage("signal_and_crb"):
            f, result = signal_and_crb(model, th)
            std = result.variance.cpu().sqrt().numpy()            # σ = 1, |M0| = 1
    elif not bool(own_fit.all()):
        with times.stage("m0_residual"), torch.no_grad():
            f = model.simulate(th).to(torch.complex128)
    with times.stage("m0_residual"):
        y128 = signals.to("cpu", torch.complex128)
        m0, rss = m0_and_rss(y128, None if f is None else f.cpu(), fit, own_fit)
        dof = 2 * T - P - 2
        sigma2 = rss / dof if dof > 0 else torch.full_like(rss, float("nan"))
        if uncertainty:
            # CRB ∝ 1/|M0|²: the σ = 1 standard deviation at the voxel's own |M0|.
            with np.errstate(divide="ignore", invalid="ignore"):
                std = std / m0.abs().numpy()[:, None]
            std_unit = np.where(np.isfinite(std), std, np.nan)
    return ChunkResult(theta=theta.numpy(), ok=ok.numpy(), out_of_bounds=outside.numpy(),
                       m0=m0.numpy(), sigma2=sigma2.numpy(), std_unit=std_unit)
