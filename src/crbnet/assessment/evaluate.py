"""Evaluation of any estimator against the Cramér–Rao bound (docs/statistics.md §5).

On a set of parameter points (a grid, or samples of the training distribution), each point gets
R noisy measurements ``y = M0·f(θ) + n`` with |M0| = 1, a random M0 phase per realization and
complex white Gaussian noise of std ``σ = 1/SNR`` on the real and on the imaginary part. From
the R estimates of each point and parameter:

    bias = mean(θ̂) − θ,   std = sample std of θ̂ (ddof 1),   MSE = mean((θ̂ − θ)²)

and their CRB-normalized forms ``bias/√CRB``, ``std/√CRB`` (≥ 1 for an unbiased estimator)
and ``MSE/CRB`` (1 for an efficient unbiased estimator), with the CRB of that point at that σ.

Grids: a model with one estimated parameter gets an n-point axis; otherwise the grid is n × n
over two chosen parameters (default: the first two estimated ones) with the others held at
their defaults — heat maps need two axes, and every parameter's metrics are shown over that
pair. Grid values are cell centers of the training range (log cells for parameters sampled
log-uniformly), so no point sits on the range's edge.

Points where a parameter's CRB is infinite (not identifiable there) get NaN metrics for that
parameter and are left out of its summary means; the summary says how many and which.

Gross errors: every realization whose estimate is off by more than 5 √CRB in some parameter is
classified as a *local minimum* (its data cost, M0 projected out, is above the cost at the
truth) or an *alternative solution* (at or below it) by :mod:`crbnet.assessment.gross_errors`, for every
estimator — NLLS, dictionary and network alike (that module says what each label means for
each). The result keeps the counts per point and reports the fractions of all realizations.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from crbnet.assessment.gross_errors import GROSS_ERROR_THRESHOLD, KINDS, classify_gross_errors
from crbnet.errors import InputError
from crbnet.estimators.calling import checked_predict, warm_up
from crbnet.files import json_ready
from crbnet.estimators.dictionary import parameter_axis
from crbnet.estimators.protocol import Estimator
from crbnet.stats.metrics import crb_normalized, finite_crb
from crbnet.physics.models.base import SignalModel, resolve_ranges
from crbnet.progress import ProgressFactory
from crbnet.progress import resolve as resolve_progress
from crbnet.stats.crb import SingularFisherWarning, crb
from crbnet.stats.noise import SNR_DEFINITION as _SNR
from crbnet.stats.noise import add_noise, noisy_measurements
from crbnet.stats.sampling import ParameterSampler

SNR_DEFINITION = _SNR + "; here |M0| = 1 with a uniformly random phase"

#: Names of the per-point metrics (arrays [G, P]) and of their summary means.
METRICS = ("bias_over_sqrt_crb", "std_over_sqrt_crb", "mse_over_crb")


@dataclass
class Grid:
    """Parameter points to evaluate on.

    Attributes:
        theta: [G, P] float64 (SI), in the order of the model's parameters.
        axes: ``{name: values}`` of the 1 or 2 gridded parameters (empty for samples).
        shape: ``(n,)`` or ``(n_first, n_second)``; ``theta`` runs over the axes in C order
            (the first axis slowest). Empty for samples.
        fixed_values: values of the estimated parameters held constant on the grid.
    """

    theta: torch.Tensor
    axes: dict[str, np.ndarray] = field(default_factory=dict)
    shape: tuple[int, ...] = ()
    fixed_values: dict[str, float] = field(default_factory=dict)


def make_grid(model: SignalModel, n: int | Mapping[str, int],
              ranges: Mapping[str, tuple[float, float]] | None = None,
              axes: Sequence[str] | None = None,
              values: Mapping[str, float] | None = None) -> Grid:
    """A 1-D (one estimated parameter) or 2-D grid of parameter points.

    Args:
        model: the signal model.
        n: points per axis (int) or ``{name: n}``.
        ranges: ``{name: (low, high)}`` (SI); default the model's training ranges.
        axes: the two parameters to grid when the model has more than one (default: the first
            two estimated parameters).
        values: values (SI) of the other parameters (default: the model's defaults).
    """
    params = model.parameters
    if axes is None:
        axes = params[:2]
    axes = tuple(axes)
    for name in axes:
        if name not in params:
            raise InputError(f"unknown grid parameter {name!r}; estimated: {', '.join(params)}")
    if len(set(axes)) != len(axes) or not 1 <= len(axes) <= 2:
        raise InputError("the grid needs one or two distinct parameters")
    if len(axes) != min(2, len(params)):
        raise InputError(f"give {min(2, len(params))} grid parameter(s) for model {model.name}")
    counts = {a: int(n[a] if isinstance(n, Mapping) else n) for a in axes}
    if any(c < 1 for c in counts.values()):
        raise InputError("grid size must be >= 1")
    rng = resolve_ranges(model, ranges)
    axis_values = {a: parameter_axis(*rng[a], counts[a], log=model.spec(a).log_uniform,
                                     centered=True) for a in axes}
    others = dict(model.defaults)
    for name, v in (values or {}).items():
        if name not in params:
            raise InputError(f"unknown parameter {name!r}; estimated: {', '.join(params)}")
        others[name] = float(v)
    mesh = np.meshgrid(*(axis_values[a] for a in axes), indexing="ij")
    G = mesh[0].size
    theta = np.empty((G, len(params)))
    for j, p in enumerate(params):
        theta[:, j] = mesh[axes.index(p)].reshape(-1) if p in axes else others[p]
    theta_t = torch.from_numpy(theta)
    model.check_theta(theta_t)
    return Grid(theta=theta_t, axes=axis_values, shape=tuple(counts[a] for a in axes),
                fixed_values={p: others[p] for p in params if p not in axes})


def sample_points(model: SignalModel, n: int, seed: int = 0,
                  ranges: Mapping[str, tuple[float, float]] | None = None) -> Grid:
    """``n`` points drawn from the model's training distribution (no grid structure)."""
    if n < 1:
        raise InputError("number of points must be >= 1")
    sampler = ParameterSampler(model, dict(ranges or {}))
    theta = sampler.sample(n, torch.Generator().manual_seed(seed))
    return Grid(theta=theta)


@dataclass
class EvaluationResult:
    """Per-point statistics of one estimator (arrays [G, P], SI; NaN where undefined)."""

    model: str
    estimator: str
    parameters: tuple[str, ...]
    units: dict[str, str]
    theta: np.ndarray
    crb: np.ndarray
    bias: np.ndarray
    std: np.ndarray
    mse: np.ndarray
    n_failed: np.ndarray          # [G] realizations whose estimate was NaN/Inf
    snr: float
    realizations: int
    seed: int
    n_voxels: int
    predict_seconds: float
    grid: Grid
    gross_counts: dict[str, np.ndarray] | None = None   # [G] per kind of gross_errors.KINDS

    @property
    def sigma(self) -> float:
        return 1.0 / self.snr

    @property
    def voxels_per_second(self) -> float:
        return self.n_voxels / self.predict_seconds if self.predict_seconds > 0 else math.inf

    def _finite_crb(self) -> np.ndarray:
        return finite_crb(torch.from_numpy(self.crb)).numpy()

    def _ratio(self, num: np.ndarray, den: np.ndarray) -> np.ndarray:
        """``num/den`` with ``den`` the CRB or its square root; NaN where the CRB is unusable."""
        with np.errstate(invalid="ignore"):
            return crb_normalized(torch.from_numpy(np.asarray(num, dtype=np.float64)),
                                  torch.from_numpy(np.asarray(den, dtype=np.float64))).numpy()

    @property
    def bias_over_sqrt_crb(self) -> np.ndarray:
        return self._ratio(self.bias, np.sqrt(self.crb))

    @property
    def std_over_sqrt_crb(self) -> np.ndarray:
        return self._ratio(self.std, np.sqrt(self.crb))

    @property
    def var_over_crb(self) -> np.ndarray:
        return self._ratio(self.std ** 2, self.crb)

    @property
    def mse_over_crb(self) -> np.ndarray:
        return self._ratio(self.mse, self.crb)

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per parameter, over the points with a finite CRB and finite metrics:
        ``mse_over_crb`` (mean), ``mse_over_crb_median``, ``bias_over_sqrt_crb`` (mean of the
        absolute value), ``bias_over_sqrt_crb_signed`` (mean), ``std_over_sqrt_crb`` (mean),
        ``var_over_crb`` (mean), ``n_points`` used, and the excluded points."""
        out = {}
        mse_r, bias_r, std_r, var_r = (self.mse_over_crb, self.bias_over_sqrt_crb,
                                       self.std_over_sqrt_crb, self.var_over_crb)
        finite_crb = self._finite_crb()
        for j, p in enumerate(self.parameters):
            ok = np.isfinite(mse_r[:, j]) & np.isfinite(bias_r[:, j]) & np.isfinite(std_r[:, j])

            def mean(a: np.ndarray) -> float:
                return float(np.mean(a[ok, j])) if ok.any() else math.nan

            inf_points = np.flatnonzero(~finite_crb[:, j])
            failed_points = np.flatnonzero(finite_crb[:, j] & ~ok)
            out[p] = {
                "mse_over_crb": mean(mse_r),
                "mse_over_crb_median": float(np.median(mse_r[ok, j])) if ok.any() else math.nan,
                "bias_over_sqrt_crb": mean(np.abs(bias_r)),
                "bias_over_sqrt_crb_signed": mean(bias_r),
                "std_over_sqrt_crb": mean(std_r),
                "var_over_crb": mean(var_r),
                "n_points": int(ok.sum()),
                "n_points_infinite_crb": int(inf_points.size),
                "points_infinite_crb": self.theta[inf_points[:20]].tolist(),
                "n_points_failed": int(failed_points.size),
            }
        return out

    def gross_error_fractions(self) -> dict[str, np.ndarray] | None:
        """Per point [G]: ``gross_fraction``, ``local_minimum_fraction`` and
        ``alternative_fraction`` of its realizations (None when not classified)."""
        if self.gross_counts is None:
            return None
        return {f"{k}_fraction": self.gross_counts[k] / self.realizations for k in KINDS}

    def gross_error_summary(self) -> dict[str, Any] | None:
        """Over all points × realizations: how many estimates are off by more than 5 √CRB
        (``gross``) and how they split into local minima and alternative solutions, as counts
        and fractions of all realizations (None when not classified)."""
        if self.gross_counts is None:
            return None
        total = int(self.theta.shape[0] * self.realizations)
        out: dict[str, Any] = {"threshold_sqrt_crb": GROSS_ERROR_THRESHOLD,
                               "n_realizations": total}
        for kind in KINDS:
            n = int(self.gross_counts[kind].sum())
            out[f"n_{kind}"] = n
            out[f"{kind}_fraction"] = n / total if total else math.nan
        out["n_points_with_local_minimum"] = int((self.gross_counts["local_minimum"] > 0).sum())
        return out

    def to_json(self, include_points: bool = True) -> dict[str, Any]:
        """JSON-ready dictionary: configuration, summary and (optionally) per-point arrays."""
        d: dict[str, Any] = {
            "model": self.model,
            "estimator": self.estimator,
            "parameters": list(self.parameters),
            "units": self.units,
            "snr": self.snr,
            "sigma": self.sigma,
            "snr_definition": SNR_DEFINITION,
            "realizations": self.realizations,
            "seed": self.seed,
            "n_points": int(self.theta.shape[0]),
            "n_voxels": self.n_voxels,
            "predict_seconds": self.predict_seconds,
            "voxels_per_second": self.voxels_per_second,
            "voxels_per_second_note": "predict() calls only; setup and a warm-up call excluded",
            "n_failed_estimates": int(self.n_failed.sum()),
            "grid": {"axes": {k: v.tolist() for k, v in self.grid.axes.items()},
                     "shape": list(self.grid.shape),
                     "fixed_values": self.grid.fixed_values,
                     "kind": "grid" if self.grid.axes else "samples"},
            "summary": self.summary(),
            "gross_errors": self.gross_error_summary(),
            "gross_errors_definition": (
                f"realizations off by > {GROSS_ERROR_THRESHOLD:g} sqrt(CRB) in some parameter "
                "with a finite CRB; local_minimum: their data cost (M0 projected out) is above "
                "the cost at the truth (the estimator missed a better fit); alternative: at or "
                "below it (the data prefer another point); fractions of all realizations"),
            "metrics": {
                "bias": "mean(estimate) - truth over the realizations (SI)",
                "std": "sample standard deviation over the realizations, ddof 1 (SI)",
                "mse": "mean((estimate - truth)^2) over the realizations (SI^2)",
                "bias_over_sqrt_crb": "bias / sqrt(CRB); summary: mean of |.| over points",
                "std_over_sqrt_crb": "std / sqrt(CRB); >= 1 for an unbiased estimator",
                "mse_over_crb": "MSE / CRB; 1 for an efficient unbiased estimator",
            },
        }
        if include_points:
            d["points"] = {
                "theta": self.theta, "crb": self.crb, "bias": self.bias, "std": self.std,
                "mse": self.mse, "bias_over_sqrt_crb": self.bias_over_sqrt_crb,
                "std_over_sqrt_crb": self.std_over_sqrt_crb, "mse_over_crb": self.mse_over_crb,
                "n_failed": self.n_failed,
                **(self.gross_error_fractions() or {}),
            }
        return json_ready(d)

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        """Write ``evaluation.json`` into ``out_dir`` (the figure beside it:
        :func:`crbnet.reporting.evaluation.write_evaluation`)."""
        from crbnet import files

        path = Path(out_dir) / "evaluation.json"
        files.write_json(path, self.to_json())
        return {"json": path}


class _PointStats:
    """Running per-point mean and sum of squared deviations (Chan et al. merge), exact for
    blocks of realizations of the same points."""

    def __init__(self, G: int, P: int) -> None:
        self.count = np.zeros((G, P))
        self.mean = np.zeros((G, P))
        self.m2 = np.zeros((G, P))
        self.sq = np.zeros((G, P))     # Σ (θ̂ − θ)²

    def add(self, points: slice, errors: np.ndarray) -> None:
        """``errors`` [g, r, P] = estimate − truth for r new realizations of the points."""
        r = np.isfinite(errors).sum(1)
        e = np.where(np.isfinite(errors), errors, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_b = np.where(r > 0, e.sum(1) / np.maximum(r, 1), 0.0)
        m2_b = (np.where(np.isfinite(errors), (errors - mean_b[:, None, :]) ** 2, 0.0)).sum(1)
        n_a = self.count[points]
        n = n_a + r
        delta = mean_b - self.mean[points]
        with np.errstate(invalid="ignore", divide="ignore"):
            frac = np.where(n > 0, r / np.maximum(n, 1), 0.0)
        self.m2[points] += m2_b + delta ** 2 * n_a * frac
        self.mean[points] += delta * frac
        self.count[points] = n
        self.sq[points] += (e ** 2).sum(1)

    def moments(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(bias, std, MSE)`` [G, P] of the errors so far; NaN where too few are finite."""
        count = self.count
        with np.errstate(invalid="ignore", divide="ignore"):
            bias = np.where(count > 0, self.mean, np.nan)
            std = np.where(count > 1, np.sqrt(self.m2 / np.maximum(count - 1, 1)), np.nan)
            mse = np.where(count > 0, self.sq / np.maximum(count, 1), np.nan)
        return bias, std, mse


def evaluate(estimator: Estimator, grid: Grid | torch.Tensor, snr: float = 100.0,
             realizations: int = 100, seed: int = 0, batch_size: int = 8192,
             progress: ProgressFactory | None = None,
             on_block: Callable[[slice, torch.Tensor, np.ndarray], None] | None = None,
             classify: bool = True) -> EvaluationResult:
    """Bias, std and MSE of ``estimator`` on every point of ``grid``, against the CRB.

    Args:
        estimator: anything with ``model`` and ``predict(signals) -> [N, P]``.
        grid: a :class:`Grid` (from :func:`make_grid` or :func:`sample_points`) or a [G, P]
            tensor of points (SI).
        snr: |M0|/σ with |M0| = 1 (σ = 1/snr on real and imaginary parts).
        realizations: noise realizations per point (≥ 2).
        seed: seed of the M0 phases and the noise.
        batch_size: voxels passed to one ``predict`` call (memory bound).
        progress: progress bars (:mod:`crbnet.progress`; None: none).
        on_block: called after each block as ``on_block(points, signals, estimates)`` with the
            point slice, the noisy signals [g·r, T] and the estimates [g, r, P] (NaN where the
            estimate failed) — for statistics beyond bias/std/MSE without a second pass.
        classify: count, per point, the realizations off by more than 5 √CRB and split them
            into local minima and alternative solutions (:mod:`crbnet.assessment.gross_errors`; costs one
            simulation of each such estimate and of its truth).

    Estimates that come back NaN/Inf count as failures (``n_failed``) and are left out of the
    statistics of their point. Timing covers the ``predict`` calls only, after an untimed
    warm-up call that also triggers lazy setup (e.g. dictionary simulation).
    """
    model = estimator.model
    grid, theta = _checked_inputs(estimator, grid, snr, realizations)
    G, P, R = theta.shape[0], model.n_parameters, int(realizations)
    sigma = 1.0 / snr
    bound = _bounds(model, theta, sigma)
    generator = torch.Generator().manual_seed(seed)
    truth = theta.numpy()
    stats = _PointStats(G, P)
    n_failed = np.zeros(G, dtype=np.int64)
    gross_counts = {kind: np.zeros(G, dtype=np.int64) for kind in KINDS} if classify else None

    def noisy(f_points: torch.Tensor, r: int) -> torch.Tensor:
        return noisy_measurements(f_points.repeat_interleave(r, 0), sigma, generator)[0]

    _warm_up(estimator, theta, sigma, seed)

    points_per_block = max(1, batch_size // R)
    real_per_block = min(R, batch_size)
    seconds = 0.0
    bars = resolve_progress(progress)(total=G * R, unit="voxel",
                                      desc=f"evaluate {getattr(estimator, 'name', '')}")
    with bars as bar:
        for g0 in range(0, G, points_per_block):
            pts = slice(g0, min(G, g0 + points_per_block))
            f_block = model.simulate(theta[pts])
            for r0 in range(0, R, real_per_block):
                r = min(real_per_block, R - r0)
                y = noisy(f_block, r)
                called = checked_predict(estimator, y)
                seconds += called.seconds
                est = _accumulate(called.theta.numpy().reshape(-1, r, P), pts, truth, stats, n_failed)
                if gross_counts is not None:
                    _count_gross(model, pts, y, est, theta, bound, gross_counts)
                if on_block is not None:
                    on_block(pts, y, est)
                bar.update(y.shape[0])

    bias, std, mse = stats.moments()
    return EvaluationResult(
        model=model.name, estimator=str(getattr(estimator, "name", type(estimator).__name__)),
        parameters=tuple(model.parameters), units=dict(model.units), theta=truth, crb=bound,
        bias=bias, std=std, mse=mse, n_failed=n_failed, snr=float(snr), realizations=R,
        seed=int(seed), n_voxels=G * R, predict_seconds=seconds, grid=grid,
        gross_counts=gross_counts)


def _checked_inputs(estimator: Estimator, grid: Grid | torch.Tensor, snr: float,
                    realizations: int) -> tuple[Grid, torch.Tensor]:
    """The grid (a bare [G, P] tensor wrapped) and its points as float64 on the CPU;
    :class:`InputError` for points outside the model's bounds, a bad SNR, fewer than 2
    realizations or an estimator of other parameters."""
    model = estimator.model
    if not isinstance(grid, Grid):
        grid = Grid(theta=torch.as_tensor(grid, dtype=torch.float64))
    theta = grid.theta.to(torch.float64).cpu()
    model.check_theta(theta)
    if not (isinstance(snr, (int, float)) and math.isfinite(snr) and snr > 0):
        raise InputError(f"SNR must be a positive number, got {snr!r}")
    if realizations < 2:
        raise InputError("at least 2 noise realizations per point are needed for a std")
    if tuple(estimator.parameters) != tuple(model.parameters):
        raise InputError(f"estimator parameters {list(estimator.parameters)} differ from the "
                         f"model's {list(model.parameters)}")
    return grid, theta


def _bounds(model: SignalModel, theta: torch.Tensor, sigma: float) -> np.ndarray:
    """[G, P] CRB at noise level ``sigma`` (infinite where a parameter is not identifiable:
    those points are reported, so the warning is not needed)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SingularFisherWarning)
        return crb(model, theta, sigma=sigma).numpy()


def _warm_up(estimator: Estimator, theta: torch.Tensor, sigma: float, seed: int) -> None:
    """One untimed ``predict`` (lazy set-up, e.g. a dictionary's simulation), drawn from a
    generator of its own so that the evaluation's draws do not depend on it."""
    warm_gen = torch.Generator().manual_seed(seed + 1)
    f0 = estimator.model.simulate(theta[:1])
    warm_up(estimator, add_noise(f0.repeat(2, 1), sigma, warm_gen))


def _accumulate(est: np.ndarray, pts: slice, truth: np.ndarray, stats: _PointStats,
                n_failed: np.ndarray) -> np.ndarray:
    """Add a block of estimates [g, r, P] to the running statistics of its points; a
    non-finite estimate counts as a failure of its point and becomes NaN (returned)."""
    bad = ~np.isfinite(est).all(-1)
    n_failed[pts] += bad.sum(1)
    est = np.where(bad[..., None], np.nan, est)
    stats.add(pts, est - truth[pts][:, None, :])
    return est


def _count_gross(model: SignalModel, pts: slice, signals: torch.Tensor, est: np.ndarray,
                 theta: torch.Tensor, bound: np.ndarray,
                 gross_counts: dict[str, np.ndarray]) -> None:
    """Add the block's gross errors of each kind (:mod:`crbnet.assessment.gross_errors`) to
    ``gross_counts`` of its points."""
    g, r, P = est.shape
    kinds = classify_gross_errors(model, signals.cpu(), torch.from_numpy(est.reshape(-1, P)),
                                  theta[pts].repeat_interleave(r, 0),
                                  torch.from_numpy(bound[pts]).repeat_interleave(r, 0))
    for kind in KINDS:
        gross_counts[kind][pts] += kinds[kind].view(g, r).sum(1).numpy()
