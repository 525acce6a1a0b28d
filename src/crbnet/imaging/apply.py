"""Apply an estimator to an image: parameter maps, M0, noise level and CRB uncertainty maps.

For every voxel in the mask, with ``y`` its complex time series (T points), the estimator gives
``θ̂``; then

* ``M0̂ = f(θ̂)ᴴ y / ‖f(θ̂)‖²`` — the least-squares complex M0 given θ̂;
* the residual noise level ``σ̂_v² = ‖y − M0̂ f(θ̂)‖² / (2T − P − 2)`` (2T real data, P + 2 fitted
  real unknowns: θ and the real and imaginary part of M0 — exact for a least-squares fit, an
  upper estimate for any other estimator, whose misfit adds to the residual);
* the CRB standard deviation ``sqrt(CRB_p(θ̂; σ, |M0̂|))`` (docs/statistics.md §2), computed once for σ = 1 and
  scaled by the voxel's σ. Voxels whose Fisher matrix is singular (e.g. T2s where m0s = 0) get
  NaN and are counted.

No simulation of ``f(θ̂)`` is repeated: the forward-mode pass that gives the Jacobian for the
CRB gives ``f(θ̂)`` too (:func:`crbnet.stats.crb.signal_and_crb`; a model with a cheaper Gram-only
CRB route is simulated once beside it); an estimator that fitted the signal itself (``predict_with_fit``: dictionary matching, NLLS) supplies M0 and the
residual, so without CRB maps its voxels need no simulation at all. ``apply.json`` reports the
seconds per stage (``seconds_by_stage``: survey, read, estimate, m0_residual, signal_and_crb,
write, other).

Noise level σ (the standard deviation of the real and of the imaginary part of the noise):

* ``sigma=`` given: used as is.
* ``"background"``: from the voxels outside the mask, which hold noise only:
  ``σ² = median_v(‖y_v‖² / 2T) / m(2T)``, with ``m(ν) ≈ (1 − 2/(9ν))³`` the median of
  ``χ²_ν / ν`` (Wilson–Hilferty) — the median keeps a minority of non-noise voxels (scalp,
  artefacts) from biasing it. Needs at least 100 background voxels that are not exactly zero
  (zero-filled voxels, as outside a reconstruction's mask, hold no noise).
* ``"residual"``: ``σ² = median_v(σ̂_v²) / m(2T − P − 2)`` over the mask (robust to a minority of
  badly fitted voxels; exact for an unbiased least-squares estimator).
* ``"voxel"``: every voxel's own ``σ̂_v`` (for noise that varies in space, e.g. with parallel
  imaging; noisier by a factor ≈ 1/sqrt(T) per voxel).
* ``"auto"`` (default): background when there is one, residual otherwise.

Without a mask, the mask is found from the data: the model's signals lie close to a
low-dimensional subspace U (SVD of simulated training signals, energy 1 − 10⁻⁶). The noise level
is first taken from the orthogonal complement, ``median_v ‖(I − UUᴴ) y_v‖² / (2(T − k))``, which
holds (almost) no signal; a voxel is in the mask when its energy in the subspace exceeds what
noise alone reaches with probability 10⁻⁶ (``‖Uᴴ y‖² / σ² > χ²_{2k}`` quantile). Give a mask
for data with structured background (scalp, fat).

Voxels with NaN or Inf anywhere in their time series are left out of the mask and counted;
estimates that are not finite likewise. Estimates outside the model's bounds are written as
they are (and counted) but clipped to the bounds for M0, the residual and the CRB.

Subspace coefficients: when the estimator's model is a
:class:`~crbnet.stats.projected.ProjectedModel` (``--basis U``), the input holds the K complex
coefficient images ``z = Uᴴ y`` a low-rank reconstruction produces (last axis = coefficient), and
everything above happens in coefficient space: ``f`` is ``Uᴴ f(θ̂)``, T reads K (the noise of
orthonormal coefficients is white with the same σ, so the background, residual and voxel noise
estimates keep their form with 2K real data), and the CRB-std maps are the subspace CRBs
``F = Re((UᴴJ)ᴴ(UᴴJ))/σ²``. A time series of T points given with a basis is projected on it as it
is read, so it yields the same maps as its coefficients. An input whose sidecar names a basis
(``Basis.hash``) is refused unless the estimator works in that same basis.

Range flags: every estimator knows a range per parameter — a network its training ranges, a
dictionary its grid, NLLS its box. An estimate within 1 % of that range's width (on a log scale
for parameters sampled log-uniformly) of either end says "at least this far", not "here":
``flags.nii.gz`` holds bit j (value 2^j) for parameter j at the edge, ``apply.json`` the counts.

Everything is written to a temporary folder beside the output folder and renamed into place at
the end (:func:`crbnet.imaging.nifti.atomic_directory`): a run that fails leaves nothing behind.
"""

from __future__ import annotations

import math
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from crbnet import __version__
from crbnet.errors import InputError
from crbnet.estimators.protocol import Estimator, SignalFit, least_squares_m0
from crbnet.imaging import goodness_of_fit as gof  # issue 22
from crbnet.imaging.nifti import (
    DEFAULT_MAX_BYTES,
    SignalSource,
    atomic_directory,
    check_output_directory,
    write_image,
    write_sidecar,
)
from crbnet.physics.models.base import SignalModel
from crbnet.physics.sequences import sequence_hash
from crbnet.stats.noise import SNR_DEFINITION

NOISE_MODES = ("auto", "background", "residual", "voxel")
MIN_BACKGROUND_VOXELS = 100
#: False-alarm probability of the automatic mask (per noise-only voxel).
AUTO_MASK_FALSE_ALARM = 1e-6


def map_name(model: SignalModel, parameter: str) -> str:
    """File name stem of a parameter's map: the model's name for it
    (:attr:`~crbnet.physics.models.base.ParameterSpec.map_name`, e.g. ``T1`` → ``T1map``), else the
    parameter's name (``T1f`` → ``T1f``)."""
    return model.map_name(parameter)


def chi2_median_ratio(dof: float) -> float:
    """Median of χ²_ν / ν (Wilson–Hilferty; relative error < 1e-3 for ν ≥ 2)."""
    return (1 - 2 / (9 * dof)) ** 3


@dataclass
class ApplyResult:
    """What :func:`apply_to_volume` wrote and found.

    Attributes:
        out_dir: the output folder.
        maps: ``{file stem: array}`` of every written map (grid shape).
        mask: bool grid of the voxels that were estimated.
        sigma: the noise level used for the uncertainty maps (scalar; NaN for ``"voxel"``).
        summary: the content of ``apply.json``.
    """

    out_dir: Path
    maps: dict[str, np.ndarray]
    mask: np.ndarray
    sigma: float
    summary: dict = field(default_factory=dict)


#: Fraction of an estimator's range at either end whose estimates are flagged.
EDGE_FRACTION = 0.01


# --------------------------------------------------------------------------------------------
# Checks


def check_compatible(source: SignalSource, model: SignalModel,
                     ignore_sequence_hash: bool = False) -> None:
    """The data must have the model's time points (and, if its sidecar says, its sequence)."""
    side = source.sidecar or {}
    check_basis(side, model)
    if source.n_timepoints != model.n_timepoints:
        if getattr(model, "basis", None) is not None:
            fewer = source.n_timepoints < model.n_timepoints
            raise InputError(f"the input has {source.n_timepoints} points on its last axis but "
                             f"the {model.name} estimator reads {model.n_timepoints} "
                             f"coefficients (or {model.base.n_timepoints} time points)"
                             + (f": give --basis-rank {source.n_timepoints} to use the basis' "
                                f"first {source.n_timepoints} columns" if fewer else ""))
        raise InputError(f"the input has {source.n_timepoints} time points (last axis) but the "
                         f"{model.name} sequence has {model.n_timepoints}")
    if ignore_sequence_hash:
        return
    expected = sequence_hash(model.sequence)
    found = side.get("SequenceHash")
    if found is not None and str(found) != expected:
        raise InputError(f"the input's sidecar has sequence hash {found}, the estimator's "
                         f"sequence is {expected}: the data were acquired with another sequence "
                         "(override with --ignore-sequence-hash)")
    if side.get("Model") not in (None, model.name):
        raise InputError(f"the input's sidecar says model {side['Model']!r}, the estimator uses "
                         f"{model.name!r} (override with --ignore-sequence-hash)")


def check_basis(sidecar: dict, model: SignalModel) -> None:
    """Coefficients are only read in the basis they were made in (sidecar ``Basis.hash``)."""
    from crbnet.stats.projected import ProjectedModel

    declared = sidecar.get("Basis")
    found = declared.get("hash") if isinstance(declared, dict) else None
    mine = model.basis_hash if isinstance(model, ProjectedModel) else None
    if found is not None and mine is None:
        raise InputError(f"the input holds subspace coefficients in basis {found} (its "
                         "sidecar says); give that basis with --basis")
    if found is not None and str(found) != mine:
        raise InputError(f"the input's coefficients are in basis {found}, the estimator works "
                         f"in basis {mine}: another basis")


class ProjectedSource(SignalSource):
    """A time series source read as its coefficients in ``model``'s basis (``Uᴴ y`` per
    voxel, block by block)."""

    def __init__(self, source: SignalSource, model: Any) -> None:
        self._source, self._model = source, model
        self.spatial_shape = source.spatial_shape
        self.n_timepoints = model.n_coefficients
        self.affine, self.header = source.affine, source.header
        self.description = f"{source.description} projected on basis {model.basis_hash}"
        self.sidecar = source.sidecar
        self.itemsize = 16

    def block_size(self, max_bytes: int) -> int:
        return self._source.block_size(max_bytes)

    def read(self, block: tuple[slice, ...]) -> np.ndarray:
        data = self._source.read(block)
        flat = torch.from_numpy(np.ascontiguousarray(data.reshape(-1, data.shape[-1])))
        z = self._model.project(flat.to(torch.complex128)).numpy()
        return z.reshape(data.shape[:-1] + (z.shape[-1],))


def as_model_input(source: SignalSource, model: SignalModel) -> SignalSource:
    """``source`` as ``model`` reads it: a time series of T points is projected on the basis of
    a :class:`~crbnet.stats.projected.ProjectedModel`; anything else is returned as it is."""
    from crbnet.stats.projected import ProjectedModel

    if isinstance(model, ProjectedModel) and source.n_timepoints == model.base.n_timepoints \
            and source.n_timepoints != model.n_timepoints:
        return ProjectedSource(source, model)
    return source


def estimator_ranges(estimator: Estimator) -> dict[str, tuple[float, float]]:
    """The range of each parameter an estimator knows: a network's training ranges, a
    dictionary's grid ranges, NLLS's box; else the model's training ranges."""
    model = estimator.model
    sampling = (getattr(estimator, "info", None) or {}).get("sampling")
    if isinstance(sampling, dict) and set(model.parameters) <= set(sampling):
        return {p: (float(sampling[p]["range"][0]), float(sampling[p]["range"][1]))
                for p in model.parameters}
    for attr in ("ranges", "bounds"):
        known = getattr(estimator, attr, None)
        if isinstance(known, dict) and set(model.parameters) <= set(known):
            return {p: (float(known[p][0]), float(known[p][1])) for p in model.parameters}
    return dict(model.train_ranges)


def edge_flags(theta: np.ndarray, model: SignalModel,
               ranges: dict[str, tuple[float, float]]) -> np.ndarray:
    """[..., P] bool: estimate within :data:`EDGE_FRACTION` of the range width of either end
    (or outside it); log scale for parameters sampled log-uniformly."""
    flags = np.zeros(theta.shape, dtype=bool)
    for j, p in enumerate(model.parameters):
        lo, hi = ranges[p]
        x = theta[..., j].astype(np.float64)
        if model.spec(p).log_uniform and lo > 0:
            with np.errstate(divide="ignore", invalid="ignore"):
                u = (np.log(np.maximum(x, 1e-300)) - math.log(lo)) / (math.log(hi) - math.log(lo))
        else:
            u = (x - lo) / (hi - lo)
        flags[..., j] = (u <= EDGE_FRACTION) | (u >= 1 - EDGE_FRACTION)
    return flags


# --------------------------------------------------------------------------------------------
# Survey pass: noise power, subspace energy, automatic mask


def _model_subspace(model: SignalModel, n_signals: int = 512, seed: int = 0) -> torch.Tensor:
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
class _Survey:
    power: np.ndarray          # ‖y‖² / 2T per voxel (NaN where not finite)
    finite: np.ndarray         # bool
    auto_mask: np.ndarray | None
    sigma_complement: float | None


def _survey(source: SignalSource, model: SignalModel, max_bytes: int, auto_mask: bool,
            progress: bool) -> _Survey:
    from tqdm.auto import tqdm

    shape = source.spatial_shape
    T = source.n_timepoints
    power = np.full(shape, np.nan)
    inside = np.full(shape, np.nan) if auto_mask else None
    finite = np.zeros(shape, dtype=bool)
    basis = _model_subspace(model).numpy() if auto_mask else None
    k = 0 if basis is None else basis.shape[1]
    n_total = int(np.prod(shape))
    with tqdm(total=n_total, unit="voxel", desc="survey", file=sys.stderr,
              disable=None if progress else True) as bar:
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
    auto = None
    sigma_c = None
    if auto_mask:
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
        sigma_c = float(math.sqrt(sigma2))
    return _Survey(power=power, finite=finite, auto_mask=auto, sigma_complement=sigma_c)


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


# --------------------------------------------------------------------------------------------
# Stage timing


class StageTimes:
    """Seconds spent per stage of :func:`apply_to_volume` (what ``apply.json`` reports under
    ``seconds_by_stage``): ``survey``, ``read``, ``estimate``, ``m0_residual``,
    ``signal_and_crb``, ``write``; the rest of the run is ``other``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._open: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._open[name] = time.perf_counter()
        try:
            yield
        finally:
            t0 = self._open.pop(name)
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

    def report(self, total: float) -> dict[str, float]:
        """Seconds per stage so far (a stage still running counts until now) and ``other``."""
        now = time.perf_counter()
        seconds = dict(self.seconds)
        for name, t0 in self._open.items():
            seconds[name] = seconds.get(name, 0.0) + now - t0
        out = {name: round(value, 4) for name, value in seconds.items()}
        out["other"] = round(max(0.0, total - sum(seconds.values())), 4)
        return out


# --------------------------------------------------------------------------------------------
# Estimation of one chunk of voxels


@dataclass
class _ChunkResult:
    theta: np.ndarray          # [n, P] raw estimates
    ok: np.ndarray             # [n] finite estimate
    out_of_bounds: np.ndarray  # [n, P]
    m0: np.ndarray             # [n] complex
    sigma2: np.ndarray         # [n] residual variance estimate
    std_unit: np.ndarray | None  # [n, P] sqrt(CRB) for σ = 1 (NaN where singular)


def _predict(estimator: Estimator, signals: torch.Tensor, want_fit: bool
             ) -> tuple[torch.Tensor, SignalFit | None]:
    """θ̂ [n, P] (float64, CPU) and, if ``want_fit``, the estimator's own fit when it offers one
    (:class:`~crbnet.estimators.protocol.SignalFit`: dictionary, NLLS)."""
    fit = None
    if want_fit and hasattr(estimator, "predict_with_fit"):
        fit = estimator.predict_with_fit(signals)
        theta = fit.theta
    else:
        theta = estimator.predict(signals)
    theta = torch.as_tensor(theta).detach().to("cpu", torch.float64)
    expected = [signals.shape[0], estimator.model.n_parameters]
    if list(theta.shape) != expected:
        raise RuntimeError(f"estimator {estimator.name!r} returned shape {list(theta.shape)}, "
                           f"expected {expected}")
    return theta, fit


def _clip_to_bounds(model: SignalModel, theta: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(finite [n], outside the bounds [n, P], θ̂ clipped into the bounds with non-finite rows
    replaced by the model's defaults [n, P])."""
    ok = torch.isfinite(theta).all(1)
    lo = torch.tensor([b[0] for b in model.bounds.values()], dtype=torch.float64)
    hi = torch.tensor([b[1] for b in model.bounds.values()], dtype=torch.float64)
    outside = ((theta < lo) | (theta > hi)) & ok[:, None]
    defaults = torch.tensor(list(model.defaults.values()), dtype=torch.float64)
    return ok, outside, torch.where(ok[:, None], theta, defaults).clamp(lo, hi)


def _m0_and_rss(y: torch.Tensor, f: torch.Tensor | None, fit: SignalFit | None,
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


def _estimate_chunk(estimator: Estimator, model: SignalModel, y: np.ndarray,
                    device: torch.device, uncertainty: bool, times: StageTimes) -> _ChunkResult:
    """θ̂, M0, the residual variance and (``uncertainty``) √CRB for σ = 1 of voxels ``y``.

    Where the CRB is wanted, :func:`crbnet.stats.crb.signal_and_crb` gives ``f(θ̂)`` with it; where
    not, ``f(θ̂)`` is simulated only when some voxel's M0 and residual did not come from the
    estimator's own fit."""
    from crbnet.stats.crb import signal_and_crb

    n, T = y.shape
    P = model.n_parameters
    signals = torch.from_numpy(np.ascontiguousarray(y)).to(device)
    with times.stage("estimate"):
        # With the CRB, signal_and_crb simulates f(θ̂) anyway: the estimator's own fit (which
        # may simulate it too) would be the same least squares done twice.
        theta, fit = _predict(estimator, signals, want_fit=not uncertainty)
    ok, outside, clipped = _clip_to_bounds(model, theta)
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
        m0, rss = _m0_and_rss(y128, None if f is None else f.cpu(), fit, own_fit)
        dof = 2 * T - P - 2
        sigma2 = rss / dof if dof > 0 else torch.full_like(rss, float("nan"))
        if uncertainty:
            # CRB ∝ 1/|M0|²: the σ = 1 standard deviation at the voxel's own |M0|.
            with np.errstate(divide="ignore", invalid="ignore"):
                std = std / m0.abs().numpy()[:, None]
            std_unit = np.where(np.isfinite(std), std, np.nan)
    return _ChunkResult(theta=theta.numpy(), ok=ok.numpy(), out_of_bounds=outside.numpy(),
                        m0=m0.numpy(), sigma2=sigma2.numpy(), std_unit=std_unit)


# --------------------------------------------------------------------------------------------
# Estimation pass over the volume


@dataclass
class _Estimates:
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
              gather_background: bool) -> "_Estimates":
        # Maps are held as float32 (as written): a 256×256×64 volume's maps stay small.
        return cls(theta=np.zeros(shape + (P,), dtype=np.float32),
                   std_unit=np.full(shape + (P,), np.nan, np.float32) if uncertainty else None,
                   m0=np.zeros(shape, dtype=np.complex128), sigma2=np.full(shape, np.nan),
                   used=np.zeros(shape, dtype=bool), nonfinite=np.zeros(shape, dtype=bool),
                   failed=np.zeros(shape, dtype=bool), out_of_bounds=np.zeros(P, np.int64),
                   background_power=np.full(shape, np.nan) if gather_background else None)

    def store(self, block: tuple[slice, ...], where: np.ndarray,
              results: list[_ChunkResult]) -> None:
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


def _noise_power(data: np.ndarray) -> np.ndarray:
    """‖y‖² / 2T per voxel of ``data`` [n, T] (NaN where not finite)."""
    ok = np.isfinite(data).all(-1)
    values = np.full(data.shape[0], np.nan)
    values[ok] = (np.abs(data[ok]) ** 2).sum(-1) / (2 * data.shape[-1])
    return values


def _estimate_block(estimator: Estimator, model: SignalModel, data: np.ndarray,
                    bmask: np.ndarray, out: _Estimates, block: tuple[slice, ...],
                    settings: dict, times: StageTimes, bar: Any) -> None:
    """Estimate the masked voxels of one read block of data and store them in ``out``."""
    y = data[bmask]
    finite = np.isfinite(y).all(-1)
    bad_local = np.zeros(bmask.shape, dtype=bool)
    bad_local[bmask] = ~finite
    out.nonfinite[block] |= bad_local
    y = y[finite]
    chunk = settings["chunk_size"]
    results = []
    for start in range(0, y.shape[0], chunk):
        results.append(_estimate_chunk(estimator, model, y[start:start + chunk],
                                       settings["device"], settings["uncertainty"], times))
        bar.update(results[-1].ok.size)
    bar.update(int((~finite).sum()))
    if results:
        out.store(block, bmask & ~bad_local, results)


def _estimation_pass(estimator: Estimator, model: SignalModel, source: SignalSource,
                     mask: np.ndarray, gather_background: bool, settings: dict,
                     times: StageTimes) -> _Estimates:
    """Read the data block by block and estimate every voxel of ``mask``; with
    ``gather_background`` also the noise power of the voxels outside it (one read of the data
    instead of two)."""
    from tqdm.auto import tqdm

    out = _Estimates.empty(source.spatial_shape, model.n_parameters, settings["uncertainty"],
                           gather_background)
    with tqdm(total=int(mask.sum()), unit="voxel", desc=f"{estimator.name}", file=sys.stderr,
              disable=None if settings["progress"] else True) as bar:
        for block in source.blocks(settings["max_bytes"]):
            bmask = mask[block]
            if not bmask.any() and not gather_background:
                continue
            with times.stage("read"):
                data = source.read(block)
                if gather_background and not bmask.all():
                    out.background_power[block][~bmask] = _noise_power(data[~bmask])
            if bmask.any():
                _estimate_block(estimator, model, data, bmask, out, block, settings, times, bar)
    if not out.used.any():
        raise InputError("no voxel could be estimated (all masked voxels have NaN/Inf data or "
                         "failed estimates)")
    out.clear_unused()
    return out


# --------------------------------------------------------------------------------------------
# Noise level


@dataclass
class _Noise:
    method: str                  # given, background, residual or voxel
    sigma: float                 # the σ used (NaN for voxel)
    sigma_map: np.ndarray        # [*grid] σ per estimated voxel (NaN elsewhere)
    residual_map: np.ndarray     # [*grid] σ̂_v
    residual_sigma: float        # median residual estimate (NaN if no dof)
    background_sigma: float
    background_voxels: int
    dof: int


def _noise_level(est: _Estimates, survey: _Survey | None, mask: np.ndarray, T: int, P: int,
                 sigma: float | None, noise: str) -> _Noise:
    """The noise level the uncertainty maps use, by ``noise`` mode (module docstring)."""
    dof = 2 * T - P - 2
    residual_map = np.sqrt(est.sigma2)
    residual_sigma = float("nan")
    if dof > 0:
        residual_sigma = float(math.sqrt(np.nanmedian(est.sigma2[est.used])
                                         / chi2_median_ratio(dof)))
    bg_sigma, bg_voxels = float("nan"), 0
    if survey is not None:
        bg_sigma, bg_voxels = background_sigma(survey.power, survey.finite & ~mask, T)
    elif est.background_power is not None:
        bg_sigma, bg_voxels = background_sigma(est.background_power, ~mask, T)
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
    sigma_map = residual_map if method == "voxel" else np.where(est.used, used_sigma, np.nan)
    return _Noise(method=method, sigma=used_sigma, sigma_map=sigma_map,
                  residual_map=residual_map, residual_sigma=residual_sigma,
                  background_sigma=bg_sigma, background_voxels=bg_voxels, dof=dof)


# --------------------------------------------------------------------------------------------
# Maps and summary


def _parameter_maps(est: _Estimates, noise: _Noise, model: SignalModel, names: list[str],
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
    maps[gof.MAP_NAME] = gof.for_noise(noise, used)[0]  # issue 22: goodness of fit
    return maps, n_singular, at_edge


def _summary(estimator: Estimator, model: SignalModel, source: SignalSource, est: _Estimates,
             noise: _Noise, mask: np.ndarray, auto_mask: bool, n_singular: dict[str, int],
             at_edge: np.ndarray, ranges: dict[str, tuple[float, float]],
             uncertainty: bool) -> dict[str, Any]:
    """The content of ``apply.json`` (``seconds`` and ``files`` are filled in when written)."""
    used, shape = est.used, source.spatial_shape
    per_voxel = noise.method == "voxel"
    mean_m0 = float(np.abs(est.m0[used]).mean())
    ratio = noise.residual_map[used] / noise.sigma_map[used]
    basis = model.describe().get("basis")
    return {
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
        "grid": list(shape),
        "n_timepoints": source.n_timepoints,
        "voxels": {
            "in_grid": int(np.prod(shape)),
            "in_mask": int(mask.sum()),
            "mask_source": "automatic (subspace energy test)" if auto_mask else "given",
            "nonfinite_input": int(est.nonfinite.sum()),
            "failed_estimates": int(est.failed.sum()),
            "estimated": int(used.sum()),
            "out_of_bounds": dict(zip(model.parameters, (int(v) for v in est.out_of_bounds))),
            "crb_singular": n_singular,
            "at_range_edge": dict(zip(model.parameters,
                                      (int(v) for v in at_edge.sum(tuple(range(len(shape))))))),
        },
        "estimator_ranges": {p: list(r) for p, r in ranges.items()},
        "range_edge_definition": f"estimate within {EDGE_FRACTION:g} of the estimator's range "
                                 "width of either end (log scale for log-uniform parameters), or "
                                 "outside; flags.nii.gz bit j (value 2^j) = parameter j",
        "basis": basis,
        "noise": {
            "method": noise.method,
            "sigma": None if per_voxel else noise.sigma,
            "sigma_definition": "std of the real and of the imaginary part of the noise",
            "sigma_background": _finite_or_none(noise.background_sigma),
            "background_voxels": noise.background_voxels,
            "sigma_residual_median": _finite_or_none(noise.residual_sigma),
            "sigma_complement": None,
            "residual_dof": noise.dof,
            "median_residual_to_sigma": float(np.nanmedian(ratio)),
        },
        "snr": {
            "mean_abs_m0_over_sigma": float(np.nanmean(np.abs(est.m0[used])
                                                       / noise.residual_map[used]))
            if per_voxel else mean_m0 / noise.sigma,
            "definition": SNR_DEFINITION + " (mean |M0| over the estimated voxels)",
        },
        "goodness_of_fit": gof.for_noise(noise, used)[1],  # issue 22
        "uncertainty": ("sqrt(CRB) at the estimated parameters and |M0|, scaled by the noise "
                        "level (docs/statistics.md §2)"
                        + (" — the CRB of the subspace coefficients" if basis else "")
                        + "; NaN where the Fisher matrix is singular") if uncertainty else None,
        "seconds": None,
        "seconds_by_stage": None,
    }


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


# --------------------------------------------------------------------------------------------
# Writing


def _write_outputs(out_dir: Path, overwrite: bool, source: SignalSource, model: SignalModel,
                   estimator: Estimator, maps: dict[str, np.ndarray], names: list[str],
                   used: np.ndarray, summary: dict, ranges: dict[str, tuple[float, float]],
                   figure: bool, finish: Any) -> None:
    """Write every map with its sidecar, ``apply.json`` and ``maps.png`` into a temporary
    folder renamed to ``out_dir`` at the end. ``finish(summary)`` fills in the timing just
    before ``apply.json`` is written."""
    common = {"Estimator": estimator.name, "EstimatorType": type(estimator).__name__,
              "Model": model.name, "SequenceHash": summary["sequence_hash"],
              "FixedParameters": model.fixed, "Software": f"crbnet {__version__}",
              "Input": source.description}
    ref = source.reference()
    written: list[str] = []
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        def put(name: str, meta: dict, dtype: Any = np.float32) -> None:
            data = used if name == "mask" else maps[name]
            write_image(tmp / f"{name}.nii.gz", data, ref, dtype=dtype, description=name)
            write_sidecar(tmp / f"{name}.nii.gz", {**meta, **common})
            written.append(f"{name}.nii.gz")

        for name, meta, dtype in _file_descriptions(model, names, summary, ranges):
            if name in maps or name == "mask":
                put(name, meta, dtype)
        summary["files"] = written + ["apply.json"] + (["maps.png"] if figure else [])
        if figure:
            _figure(maps, names, model, used, summary["uncertainty"] is not None,
                    estimator.name, summary["noise"]["method"],
                    summary["noise"]["sigma"] or float("nan"), tmp / "maps.png")
        finish(summary)
        from crbnet.files import write_json
        write_json(tmp / "apply.json", summary)


def _file_descriptions(model: SignalModel, names: list[str], summary: dict,
                       ranges: dict[str, tuple[float, float]]) -> list[tuple[str, dict, Any]]:
    """(file stem, sidecar, dtype) of every output image, in writing order."""
    units, noise = model.units, summary["noise"]
    crb_singular = summary["voxels"]["crb_singular"]
    out: list[tuple[str, dict, Any]] = []
    for p, name in zip(model.parameters, names):
        spec = model.spec(p)
        out.append((name, {"Parameter": p, "Units": units[p] or "1",
                           "Description": spec.description, "Bounds": list(spec.bounds)},
                    np.float32))
        out.append((f"{name}_CRBstd", {
            "Parameter": p, "Units": units[p] or "1",
            "Description": f"Cramér–Rao standard deviation of {p}: {summary['uncertainty']}",
            "NoiseMethod": noise["method"], "Sigma": noise["sigma"],
            "SingularVoxels": crb_singular.get(p)}, np.float32))
    out += [
        ("M0map", {"Units": "arbitrary (input units)",
                   "Description": "|M0|, least-squares given the estimates"}, np.float32),
        ("M0phase", {"Units": "rad", "Description": "phase of M0"}, np.float32),
        ("sigma_residual", {"Units": "arbitrary (input units)",
                            "Description": "per-voxel residual noise level "
                                           "sqrt(|y - M0 f|^2 / (2T - P - 2))"}, np.float32),
        (gof.MAP_NAME, gof.sidecar(summary), np.float32),  # issue 22: goodness of fit
        ("flags", {"Description": "bit j (value 2^j) set where parameter j's estimate sits at "
                                  "the edge of the range the estimator knows: " + ", ".join(
                                      f"{1 << j} {p} [{ranges[p][0]:g}, {ranges[p][1]:g}]"
                                      for j, p in enumerate(model.parameters))},
         np.uint8 if model.n_parameters <= 8 else np.uint16),
        ("mask", {"Description": "voxels that were estimated (mask minus NaN/Inf data and "
                                 "failed estimates)"}, np.uint8),
    ]
    return out


# --------------------------------------------------------------------------------------------
# The whole run


def _checked_mask(mask: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    if mask is None:
        return None
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != shape:
        raise InputError(f"mask shape {list(mask.shape)} differs from the input grid "
                         f"{list(shape)}")
    if not mask.any():
        raise InputError("the mask is empty")
    return mask


def _check_arguments(estimator: Estimator, noise: str, sigma: float | None,
                     chunk_size: int) -> None:
    model = estimator.model
    if tuple(estimator.parameters) != tuple(model.parameters):
        raise InputError(f"estimator parameters {list(estimator.parameters)} differ from its "
                         f"model's {list(model.parameters)}")
    if noise not in NOISE_MODES:
        raise InputError(f"noise must be one of {', '.join(NOISE_MODES)}, got {noise!r}")
    if sigma is not None and not (math.isfinite(sigma) and sigma > 0):
        raise InputError("sigma must be a positive number")
    if chunk_size < 1:
        raise InputError("chunk size must be >= 1")


def apply_to_volume(estimator: Estimator, source: SignalSource, out_dir: str | Path,
                    mask: np.ndarray | None = None, sigma: float | None = None, *,
                    noise: str = "auto", chunk_size: int = 4096,
                    max_bytes: int = DEFAULT_MAX_BYTES, uncertainty: bool = True,
                    overwrite: bool = False, device: torch.device | str | None = None,
                    progress: bool = True, figure: bool = True,
                    ignore_sequence_hash: bool = False) -> ApplyResult:
    """Estimate parameter, M0, noise and uncertainty maps of a volume and write them.

    Args:
        estimator: anything with the :class:`~crbnet.estimators.protocol.Estimator` interface.
        source: the complex data (:class:`~crbnet.imaging.nifti.NiftiSignals`,
            :class:`~crbnet.imaging.matlab.MatSignals` or
            :class:`~crbnet.imaging.nifti.ArraySignals`); the last axis must be the model's time
            axis (or its basis' coefficients).
        out_dir: output folder (created; must not exist or be empty unless ``overwrite``).
        mask: bool array of the grid (None: found from the data, see the module docstring).
        sigma: noise std per real/imaginary part; None estimates it (``noise``).
        noise: 'auto', 'background', 'residual' or 'voxel' (module docstring).
        chunk_size: voxels per estimator call (bounds the estimator's and the CRB's memory).
        max_bytes: memory budget of one read block of input data (bytes).
        uncertainty: compute the CRB standard-deviation maps (slow for mt_hybrid_state).
        overwrite: replace a non-empty ``out_dir``.
        device: where simulation and CRB run (the estimator keeps its own device).
        progress: tqdm progress bars on stderr.
        figure: write ``maps.png``.
        ignore_sequence_hash: accept data whose sidecar names another sequence.

    Returns:
        an :class:`ApplyResult`.

    Files in ``out_dir``: ``<map>.nii.gz`` + ``.json`` per parameter (the model's map names,
    e.g. ``T1map``, ``T2map``, ``TB1map``, else the parameter name; SI units),
    ``<map>_CRBstd.nii.gz`` + ``.json``, ``M0map.nii.gz`` (|M0|), ``M0phase.nii.gz`` (rad),
    ``sigma_residual.nii.gz`` (σ̂_v), ``flags.nii.gz`` (estimates at the edge of the
    estimator's range, bit per parameter), ``mask.nii.gz`` (estimated voxels), ``apply.json``
    (summary, with the seconds per stage) and ``maps.png``.
    """
    started = time.perf_counter()
    times = StageTimes()
    model = estimator.model
    _check_arguments(estimator, noise, sigma, chunk_size)
    source = as_model_input(source, model)
    check_compatible(source, model, ignore_sequence_hash)
    mask = _checked_mask(mask, source.spatial_shape)
    out_dir = check_output_directory(out_dir, overwrite)
    settings = {"chunk_size": chunk_size, "device": torch.device(device or "cpu"),
                "uncertainty": uncertainty, "max_bytes": max_bytes, "progress": progress}

    survey = None
    if mask is None:             # the mask must come from the data first: a survey pass
        with times.stage("survey"):
            survey = _survey(source, model, max_bytes, auto_mask=True, progress=progress)
        mask = survey.auto_mask
        if not mask.any():
            raise InputError("the automatic mask is empty: no voxel has signal above the "
                             "noise (give --mask)")
    # With a given mask, the background power is gathered during the estimation pass.
    gather_background = survey is None and sigma is None and noise in ("auto", "background")
    est = _estimation_pass(estimator, model, source, mask, gather_background, settings, times)
    level = _noise_level(est, survey, mask, source.n_timepoints, model.n_parameters, sigma,
                         noise)

    names = [model.map_name(p) for p in model.parameters]
    ranges = estimator_ranges(estimator)
    maps, n_singular, at_edge = _parameter_maps(est, level, model, names, ranges)
    summary = _summary(estimator, model, source, est, level, mask, survey is not None,
                       n_singular, at_edge, ranges, uncertainty)
    if survey is not None:
        summary["noise"]["sigma_complement"] = survey.sigma_complement

    def finish(summary: dict) -> None:
        total = time.perf_counter() - started
        summary["seconds"] = round(total, 2)
        summary["seconds_by_stage"] = times.report(total)

    with times.stage("write"):
        _write_outputs(Path(out_dir), overwrite, source, model, estimator, maps, names,
                       est.used, summary, ranges, figure, finish)
    return ApplyResult(out_dir=Path(out_dir), maps=maps, mask=est.used, sigma=level.sigma,
                       summary=summary)


def _figure(maps: dict[str, np.ndarray], names: list[str], model: SignalModel, used: np.ndarray,
            uncertainty: bool, estimator_name: str, method: str, sigma: float, path: Path) -> None:
    from crbnet.plots.maps import plot_parameter_maps

    units = {name: model.units[p] for name, p in zip(names, model.parameters)}
    rows = [names]
    if uncertainty:
        rows.append([f"{n}_CRBstd" for n in names])
        units.update({f"{n}_CRBstd": units[n] for n in names})
    rows.append(["M0map", "M0phase", "sigma_residual"])
    units.update({"M0map": "a.u.", "M0phase": "rad", "sigma_residual": "a.u."})
    shown = {n: maps[n] for row in rows for n in row}
    sig = f"σ = {sigma:.4g} ({method})" if method != "voxel" else "σ per voxel (residual)"
    plot_parameter_maps(shown, units, path, mask=used, rows=rows,
                        title=f"{model.name} — {estimator_name}; {sig}")


__all__ = ["apply_to_volume", "ApplyResult", "map_name", "NOISE_MODES", "StageTimes",
           "check_compatible", "check_basis", "as_model_input", "ProjectedSource",
           "estimator_ranges", "edge_flags", "EDGE_FRACTION", "background_sigma", "chi2_median_ratio"]
