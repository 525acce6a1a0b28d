"""Non-linear least squares (NLLS): the maximum-likelihood estimate under white Gaussian noise.

For each voxel ``y`` (complex, T samples) the fit minimizes ``C(θ, M0) = ‖M0·f(θ) − y‖²`` over
the estimated parameters ``θ`` (inside their bounds) and the complex ``M0``.

Algorithm — batched, box-constrained Levenberg–Marquardt with M0 projected out:

* The unknowns are ``φ = (θ, Re M0, Im M0)``; the residual ``r = M0·f(θ) − y`` has the
  Jacobian ``∂r/∂φ = [M0·∂f/∂θ, f, i·f]`` (``∂f/∂θ`` by forward-mode autodiff,
  :func:`crbnet.stats.crb.jacobian`). Its real normal matrix ``A = Re(Jᴴ J)`` and half-gradient
  ``b = Re(Jᴴ r)`` are those of the real-valued problem with stacked real and imaginary parts.
* Step: ``(Â + λ I) z = −b̂`` on the Marquardt-scaled system (``D = √diag A``, ``Â = D⁻¹AD⁻¹``),
  ``δ = D⁻¹ z``. The θ part is clipped into the bounds; parameters sitting on a bound with the
  gradient pushing outward are frozen for that step (projected gradient).
* M0 is then re-set to its exact least-squares value ``fᴴy / fᴴf`` at the trial θ (variable
  projection), which can only lower the cost. A trial is accepted when the cost decreases;
  λ follows Nielsen's rule from the gain ratio (actual / predicted reduction).
* Convergence per voxel (MINPACK-style, all scale-free): the largest cosine between the
  residual and a free Jacobian column ``|J_pᵀ r| / (‖J_p‖·‖r‖) ≤ gtol``; or an accepted
  near-Gauss–Newton step with ``‖D δθ‖ ≤ xtol·(‖D θ‖ + xtol)``; or actual and predicted relative
  cost reductions both ``≤ ftol``; or an (essentially) zero residual; or the round-off floor:
  no step can lower the cost in float64 any more and the cosine is ``≤ 1e-5``. A cosine c puts
  the estimate about ``c·‖r‖/σ ≈ c·√(2T)`` CRB standard deviations from the exact optimum, so
  the default ``gtol = 1e-8`` is far inside the statistical error. Converged voxels leave the
  batch, so the work shrinks as the fit proceeds.

Starts: the ``n_starts`` best atoms of a coarse dictionary (:class:`DictionaryEstimator`),
each more than two grid cells (in at least one parameter) from the better ones; every start is
fitted and the lowest final cost wins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch

from crbnet import progress as progress_contract
from crbnet.errors import InputError
from crbnet.estimators.dictionary import DictionaryEstimator, default_points_per_parameter
from crbnet.estimators.protocol import (
    SignalFit,
    as_signal_tensor,
    least_squares_m0,
    register_estimator,
)
from crbnet.physics.models.base import SignalModel, resolve_ranges
from crbnet.progress import ProgressFactory
from crbnet.stats.crb import jacobian

#: Total atoms of the coarse dictionary that provides the starting points.
START_DICTIONARY_ATOMS = 4096

_TINY = torch.finfo(torch.float64).tiny
_EPS4 = 4 * torch.finfo(torch.float64).eps
#: Gradient cosine accepted as converged when the cost can no longer decrease in float64: the
#: cost's round-off limits a resolvable cosine to about √(eps·‖y‖/‖r‖); 1e-5 leaves the estimate
#: within ~1e-4 CRB standard deviations of the exact optimum.
ROUNDOFF_GTOL = 1e-5


@dataclass
class NLLSFit:
    """Result of :meth:`NLLSEstimator.fit` for N voxels (tensors on the signals' device).

    Attributes:
        theta: [N, P] float64 estimates (SI).
        m0: [N] complex128 least-squares M0.
        cost: [N] ``‖M0·f(θ) − y‖²`` at the estimate.
        converged: [N] bool, a convergence test passed (not just ``max_iter`` reached).
        n_iter: [N] iterations used by the winning start.
        gradient_cosine: [N] largest ``|J_pᵀ r| / (‖J_p‖·‖r‖)`` over the free parameters at the
            estimate (0 at an exact stationary point; 0 also for a zero residual).
    """

    theta: torch.Tensor
    m0: torch.Tensor
    cost: torch.Tensor
    converged: torch.Tensor
    n_iter: torch.Tensor
    gradient_cosine: torch.Tensor


def _normal_equations(jac: torch.Tensor, f: torch.Tensor, m0: torch.Tensor, r: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """``A = Re(Jᴴ J)`` [n, P+2, P+2] and ``b = Re(Jᴴ r)`` [n, P+2] for φ = (θ, Re M0, Im M0)."""
    J = torch.cat((m0[:, None, None] * jac, f[..., None], 1j * f[..., None]), dim=-1)
    A = (J.mH @ J).real
    b = (J.mH @ r[..., None]).real[..., 0]
    return A, b


def _blocked(theta: torch.Tensor, b_theta: torch.Tensor, lower: torch.Tensor,
             upper: torch.Tensor) -> torch.Tensor:
    """Parameters on a bound whose descent direction (−b) points out of the box."""
    return ((theta <= lower) & (b_theta > 0)) | ((theta >= upper) & (b_theta < 0))


def _gradient_cosine(A: torch.Tensor, b: torch.Tensor, cost: torch.Tensor,
                     blocked: torch.Tensor) -> torch.Tensor:
    P = blocked.shape[1]
    col_norm = torch.diagonal(A, dim1=-2, dim2=-1)[:, :P].clamp_min(0).sqrt()
    cos = b[:, :P].abs() / (col_norm * cost.clamp_min(0).sqrt()[:, None]).clamp_min(_TINY)
    cos = torch.where(blocked | (col_norm == 0), torch.zeros_like(cos), cos)
    return cos.amax(1)


@dataclass
class _Iterate:
    """Per-voxel state of the fit: estimate, model signal, M0, residual, cost, Jacobian,
    damping (λ, ν) and bookkeeping."""

    theta: torch.Tensor
    f: torch.Tensor
    m0: torch.Tensor
    r: torch.Tensor
    cost: torch.Tensor
    jac: torch.Tensor
    lam: torch.Tensor
    nu: torch.Tensor
    done: torch.Tensor
    converged: torch.Tensor
    n_iter: torch.Tensor


@dataclass(frozen=True)
class _Tolerances:
    gtol: float
    xtol: float
    ftol: float
    zero_residual: float


def _residual(model: SignalModel, theta: torch.Tensor, y: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(f, M0, r, cost)`` at ``theta``, with M0 at its least-squares value."""
    f = model.simulate(theta, check=False)
    m0 = least_squares_m0(f, y)
    r = m0[:, None] * f - y
    return f, m0, r, (r.conj() * r).real.sum(-1)


def _start(model: SignalModel, y: torch.Tensor, theta0: torch.Tensor, lower: torch.Tensor,
           upper: torch.Tensor) -> _Iterate:
    n, dev = theta0.shape[0], y.device
    theta = torch.minimum(torch.maximum(theta0, lower), upper).clone()
    f, m0, r, cost = _residual(model, theta, y)
    return _Iterate(theta=theta, f=f, m0=m0, r=r, cost=cost, jac=jacobian(model, theta),
                    lam=torch.full((n,), 1e-3, dtype=torch.float64, device=dev),
                    nu=torch.full((n,), 2.0, dtype=torch.float64, device=dev),
                    done=torch.zeros(n, dtype=torch.bool, device=dev),
                    converged=torch.zeros(n, dtype=torch.bool, device=dev),
                    n_iter=torch.zeros(n, dtype=torch.int64, device=dev))


def _damped_step(A: torch.Tensor, b: torch.Tensor, blocked: torch.Tensor, lam: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Marquardt-scaled, damped step with blocked parameters frozen: ``(δ, solved, D)``
    (δ = 0 where the damped system could not be solved)."""
    d = torch.diagonal(A, dim1=-2, dim2=-1).clamp_min(0).sqrt()
    d = torch.where(d > 0, d, torch.ones_like(d))
    free = torch.cat((~blocked, blocked.new_ones(blocked.shape[0], 2)), 1).to(A.dtype)
    eye = torch.eye(A.shape[-1], dtype=torch.float64, device=A.device)
    As = A / (d[:, :, None] * d[:, None, :]) * free[:, :, None] * free[:, None, :]
    As = As + torch.diag_embed(1 - free) + lam[:, None, None] * eye
    chol, info = torch.linalg.cholesky_ex(As)
    z = torch.cholesky_solve((-b / d * free)[..., None], chol)[..., 0]
    step = z / d
    solved = (info == 0) & torch.isfinite(step).all(1)
    return torch.where(solved[:, None], step, torch.zeros_like(step)), solved, d


def _predicted_drop(A: torch.Tensor, b: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """Cost drop of ``step`` predicted by the linear model."""
    return -(2 * (b * step).sum(1) + (step[:, None, :] @ A @ step[..., None])[:, 0, 0])


def _drop_stationary(it: _Iterate, act: torch.Tensor, y_energy: torch.Tensor,
                     lower: torch.Tensor, upper: torch.Tensor, tol: _Tolerances) -> tuple:
    """Normal equations of the active voxels; those already stationary (cosine ≤ gtol or a
    zero residual) are marked converged and leave. Returns ``(act, A, b, blocked, cos)`` of
    the voxels that move on."""
    P = it.theta.shape[1]
    A, b = _normal_equations(it.jac[act], it.f[act], it.m0[act], it.r[act])
    blocked = _blocked(it.theta[act], b[:, :P], lower, upper)
    cos = _gradient_cosine(A, b, it.cost[act], blocked)
    stationary = (cos <= tol.gtol) | (it.cost[act] <= tol.zero_residual * y_energy[act])
    it.converged[act[stationary]] = True
    it.done[act[stationary]] = True
    moving = ~stationary
    return act[moving], A[moving], b[moving], blocked[moving], cos[moving]


def _iterate(model: SignalModel, y: torch.Tensor, it: _Iterate, act: torch.Tensor,
             A: torch.Tensor, b: torch.Tensor, blocked: torch.Tensor, cos: torch.Tensor,
             y_energy: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor,
             tol: _Tolerances) -> None:
    """One damped step for the active voxels: try it, accept it if the cost drops, update
    the damping and the convergence flags."""
    P = it.theta.shape[1]
    th, ca, lam_a = it.theta[act], it.cost[act], it.lam[act]
    it.n_iter[act] += 1
    step, solved, d = _damped_step(A, b, blocked, lam_a)
    # Predicted cost drop of the unclipped step: when even that is below the cost's
    # round-off, no step can make progress (the clipped one may predict a rise instead).
    predicted_free = _predicted_drop(A, b, step)
    th_trial = torch.minimum(torch.maximum(th + step[:, :P], lower), upper)
    predicted = _predicted_drop(A, b, torch.cat((th_trial - th, step[:, P:]), 1))

    f_trial, m0_trial, r_trial, c_trial = _residual(model, th_trial, y[act])
    accept = solved & torch.isfinite(c_trial) & (c_trial < ca)
    actual = ca - c_trial
    rho = torch.where(predicted > 0, actual / predicted.clamp_min(_TINY),
                      torch.zeros_like(actual))

    # Nielsen's damping update.
    shrink = (1 - (2 * rho - 1) ** 3).clamp_min(1.0 / 3.0)
    lam_new = torch.where(accept, lam_a * shrink, lam_a * it.nu[act])
    nu_new = torch.where(accept, torch.full_like(lam_a, 2.0), it.nu[act] * 2)

    scaled_step = (d[:, :P] * (th_trial - th)).norm(dim=1)
    scaled_theta = (d[:, :P] * th_trial).norm(dim=1)
    small_step = accept & (lam_a < 1e-2) & (scaled_step <= tol.xtol * (scaled_theta + tol.xtol))
    small_gain = (accept & (actual <= tol.ftol * ca) & (predicted <= tol.ftol * ca)
                  & (rho <= 2))
    exact = accept & (c_trial <= tol.zero_residual * y_energy[act])
    # No decrease possible: damping exhausted, or the predicted gain is below the cost's
    # round-off. That is a minimum to working precision if the gradient is also tiny.
    stalled = ~accept & ((lam_new > 1e16) | (solved & (predicted_free <= _EPS4 * ca)))
    at_floor = stalled & (cos <= ROUNDOFF_GTOL)

    now_converged = small_step | small_gain | exact | at_floor
    it.converged[act] = now_converged
    it.done[act] = now_converged | stalled

    acc = act[accept]
    if acc.numel():
        it.theta[acc] = th_trial[accept]
        it.f[acc] = f_trial[accept]
        it.m0[acc] = m0_trial[accept]
        it.r[acc] = r_trial[accept]
        it.cost[acc] = c_trial[accept]
        it.jac[acc] = jacobian(model, th_trial[accept])
    it.lam[act] = lam_new
    it.nu[act] = nu_new


def levenberg_marquardt(model: SignalModel, signals: torch.Tensor, theta0: torch.Tensor,
                        lower: torch.Tensor, upper: torch.Tensor, max_iter: int = 200,
                        gtol: float = 1e-8, xtol: float = 1e-10, ftol: float = 1e-14,
                        zero_residual: float = 1e-26) -> NLLSFit:
    """Fit every row of ``signals`` [n, T] (complex128) from ``theta0`` [n, P] (float64).

    ``lower``/``upper`` [P] are the box bounds (SI); see the module docstring for the method
    and the convergence tests. ``zero_residual`` is the relative cost ``C/‖y‖²`` below which
    the data are fitted exactly (noiseless input).
    """
    y = signals
    tol = _Tolerances(gtol, xtol, ftol, zero_residual)
    it = _start(model, y, theta0, lower, upper)
    y_energy = (y.conj() * y).real.sum(-1)
    for _ in range(max_iter):
        act = (~it.done).nonzero().squeeze(1)
        if act.numel() == 0:
            break
        act, A, b, blocked, cos = _drop_stationary(it, act, y_energy, lower, upper, tol)
        if act.numel() == 0:
            break
        _iterate(model, y, it, act, A, b, blocked, cos, y_energy, lower, upper, tol)
    return _result(it, y_energy, lower, upper, zero_residual)


def _result(it: _Iterate, y_energy: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor,
            zero_residual: float) -> NLLSFit:
    """The fit, with the final gradient cosine (0 for a zero residual)."""
    P = it.theta.shape[1]
    A, b = _normal_equations(it.jac, it.f, it.m0, it.r)
    cos = _gradient_cosine(A, b, it.cost, _blocked(it.theta, b[:, :P], lower, upper))
    cos = torch.where(it.cost <= zero_residual * y_energy, torch.zeros_like(cos), cos)
    return NLLSFit(theta=it.theta, m0=it.m0, cost=it.cost, converged=it.converged,
                   n_iter=it.n_iter, gradient_cosine=cos)


@register_estimator("nlls", "voxel-wise maximum-likelihood fit of the full model "
                           "(Levenberg-Marquardt, complex M0 profiled out)")
class NLLSEstimator:
    """Voxel-wise NLLS fit of the full signal model with complex M0 (maximum likelihood).

    Args:
        model: the signal model.
        n_starts: starting points per voxel (best distinct atoms of a coarse dictionary); the
            fit with the lowest cost wins.
        start_points: grid points per parameter of that coarse dictionary (int or
            ``{name: n}``); default about 4096 atoms in total, at most 64 per parameter.
        bounds: ``{name: (low, high)}`` (SI) box for the fit; default the model's bounds.
        max_iter: Levenberg–Marquardt iterations at most.
        gtol, xtol, ftol: convergence tolerances (module docstring).
        chunk_size: voxels fitted together (bounds memory; all their starts are batched).
        device: where the fit runs (default: the signals' device).
        progress: a :class:`~crbnet.progress.ProgressFactory` for a bar over chunks
            (None, or a bool as older callers pass: silent).
    """

    name = "nlls"

    def __init__(self, model: SignalModel, n_starts: int = 2,
                 start_points: int | Mapping[str, int] | None = None,
                 bounds: Mapping[str, tuple[float, float]] | None = None, max_iter: int = 200,
                 gtol: float = 1e-8, xtol: float = 1e-10, ftol: float = 1e-14,
                 chunk_size: int = 2048, device: torch.device | str | None = None,
                 progress: ProgressFactory | bool | None = None) -> None:
        if n_starts < 1:
            raise InputError(f"n_starts must be >= 1, got {n_starts}")
        if max_iter < 1 or chunk_size < 1:
            raise InputError("max_iter and chunk_size must be >= 1")
        self.model = model
        self.n_starts = int(n_starts)
        self.max_iter = int(max_iter)
        self.gtol, self.xtol, self.ftol = float(gtol), float(xtol), float(ftol)
        self.chunk_size = int(chunk_size)
        self.device = torch.device(device) if device is not None else None
        self.progress = progress
        box = resolve_ranges(model, bounds, base=model.bounds, what="bounds")
        self.bounds = box
        if start_points is None:
            start_points = min(64, default_points_per_parameter(model.n_parameters,
                                                                START_DICTIONARY_ATOMS))
        # The coarse grid covers the training ranges clipped to the fit's box.
        ranges = {}
        for p in model.parameters:
            t_lo, t_hi = model.spec(p).train_range
            lo, hi = max(t_lo, box[p][0]), min(t_hi, box[p][1])
            ranges[p] = (lo, hi) if lo < hi else box[p]
        self.start_dictionary = DictionaryEstimator(model, n_points=start_points, ranges=ranges,
                                                    device=self.device, progress=False)

    @property
    def parameters(self) -> tuple[str, ...]:
        return self.model.parameters

    def fit(self, signals: torch.Tensor | np.ndarray) -> NLLSFit:
        """Fit every voxel of ``signals`` [N, T] (complex); results on the signals' device."""
        out_device = signals.device if isinstance(signals, torch.Tensor) else torch.device("cpu")
        dev = self.device or out_device
        y_all = as_signal_tensor(signals, self.model.n_timepoints, device=dev)
        self.start_dictionary.device = dev
        if self.start_dictionary.basis is not None and self.start_dictionary.basis.device != dev:
            self.start_dictionary.basis = None   # rebuild on the new device
        lower = torch.tensor([self.bounds[p][0] for p in self.parameters], dtype=torch.float64,
                             device=dev)
        upper = torch.tensor([self.bounds[p][1] for p in self.parameters], dtype=torch.float64,
                             device=dev)
        N = y_all.shape[0]
        if N == 0:
            P = self.model.n_parameters
            empty = torch.zeros(0, dtype=torch.float64, device=out_device)
            return NLLSFit(theta=torch.zeros(0, P, dtype=torch.float64, device=out_device),
                           m0=empty.to(torch.complex128), cost=empty,
                           converged=empty.bool(), n_iter=empty.long(), gradient_cosine=empty)
        parts: list[NLLSFit] = []
        starts_of = range(0, N, self.chunk_size)
        bars = progress_contract.resolve(self.progress)
        with bars(total=len(starts_of), desc="nlls", unit="chunk") as bar:
            for v0 in starts_of:
                parts.append(self._fit_chunk(y_all[v0:v0 + self.chunk_size], lower, upper))
                bar.update(1)
        fields = {name: torch.cat([getattr(p, name) for p in parts]).to(out_device)
                  for name in ("theta", "m0", "cost", "converged", "n_iter", "gradient_cosine")}
        return NLLSFit(**fields)

    def _fit_chunk(self, y: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> NLLSFit:
        """The best of ``n_starts`` Levenberg–Marquardt fits of each voxel of ``y``."""
        K, n, dev = self.n_starts, y.shape[0], y.device
        index = self.start_dictionary.top_matches(y, K, exclusion=2)
        theta0 = self.start_dictionary.atoms_theta.to(dev)[index.reshape(-1)]
        res = levenberg_marquardt(self.model, y.repeat_interleave(K, 0), theta0, lower,
                                  upper, self.max_iter, self.gtol, self.xtol, self.ftol)
        best = torch.nan_to_num(res.cost, nan=math.inf).view(n, K).argmin(1)   # NaN never wins
        pick = torch.arange(n, device=dev) * K + best
        return NLLSFit(*(getattr(res, name)[pick] for name in
                         ("theta", "m0", "cost", "converged", "n_iter", "gradient_cosine")))

    def predict_with_m0(self, signals: torch.Tensor | np.ndarray
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """Parameters [N, P] (float64, SI) and complex M0 [N]."""
        res = self.fit(signals)
        return res.theta, res.m0

    def predict_with_fit(self, signals: torch.Tensor | np.ndarray) -> SignalFit:
        """Estimates with their least-squares M0 and residual energy (the final cost)."""
        res = self.fit(signals)
        return SignalFit(theta=res.theta, m0=res.m0, rss=res.cost)

    def predict(self, signals: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Parameters [N, P] (float64, SI, order of ``parameters``)."""
        return self.fit(signals).theta

    def __repr__(self) -> str:
        return (f"NLLSEstimator(model={self.model.name}, n_starts={self.n_starts}, "
                f"max_iter={self.max_iter})")
