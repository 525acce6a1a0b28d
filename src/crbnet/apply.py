"""Apply an estimator to an image: parameter maps, M0, noise level and CRB uncertainty maps.

For every voxel in the mask, with ``y`` its complex time series (T points), the estimator gives
``θ̂``; then

* ``M0̂ = f(θ̂)ᴴ y / ‖f(θ̂)‖²`` — the least-squares complex M0 given θ̂ (the simulated ``f`` is
  reused for the residual);
* the residual noise level ``σ̂_v² = ‖y − M0̂ f(θ̂)‖² / (2T − P − 2)`` (2T real data, P + 2 fitted
  real unknowns: θ and the real and imaginary part of M0 — exact for a least-squares fit, an
  upper estimate for any other estimator, whose misfit adds to the residual);
* the CRB standard deviation ``sqrt(CRB_p(θ̂; σ, |M0̂|))`` (docs/statistics.md §2), computed once for σ = 1 and
  scaled by the voxel's σ. Voxels whose Fisher matrix is singular (e.g. T2s where m0s = 0) get
  NaN and are counted.

Noise level σ (the standard deviation of the real and of the imaginary part of the noise):

* ``sigma=`` given: used as is.
* ``"background"``: from the voxels outside the mask, which hold noise only:
  ``σ² = median_v(‖y_v‖² / 2T) / m(2T)``, with ``m(ν) ≈ (1 − 2/(9ν))³`` the median of
  ``χ²_ν / ν`` (Wilson–Hilferty) — the median keeps a minority of non-noise voxels (scalp,
  artefacts) from biasing it. Needs at least 100 background voxels.
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
:class:`~crbnet.models.projected.ProjectedModel` (``--basis U``), the input holds the K complex
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
the end (:func:`crbnet.nifti.atomic_directory`): a run that fails leaves nothing behind.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .data import SNR_DEFINITION
from .errors import InputError
from .estimator import Estimator
from .models.base import SignalModel
from .nifti import (DEFAULT_MAX_BYTES, SignalSource, atomic_directory, check_output_directory,
                    write_image, write_sidecar)
from .sequences import sequence_hash

#: BIDS-style file names of parameters that have one (others keep the parameter name).
MAP_NAMES = {"T1": "T1map", "T2": "T2map", "B1": "TB1map"}
NOISE_MODES = ("auto", "background", "residual", "voxel")
MIN_BACKGROUND_VOXELS = 100
#: False-alarm probability of the automatic mask (per noise-only voxel).
AUTO_MASK_FALSE_ALARM = 1e-6


def map_name(parameter: str) -> str:
    """File name stem of a parameter's map (``T1`` → ``T1map``, ``T1f`` → ``T1f``)."""
    return MAP_NAMES.get(parameter, parameter)


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
            raise InputError(f"the input has {source.n_timepoints} points on its last axis but "
                             f"the {model.name} estimator reads {model.n_timepoints} "
                             f"coefficients (or {model.base.n_timepoints} time points)")
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
    from .models.projected import ProjectedModel

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
    a :class:`~crbnet.models.projected.ProjectedModel`; anything else is returned as it is."""
    from .models.projected import ProjectedModel

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
    from .data import ParameterSampler
    from .subspace import fit_subspace

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
    """σ from noise-only voxels: sqrt(median(‖y‖²/2T) / m(2T)); returns (σ, voxels used)."""
    values = power[background & np.isfinite(power)]
    if values.size < MIN_BACKGROUND_VOXELS:
        return float("nan"), int(values.size)
    sigma2 = np.median(values) / chi2_median_ratio(2 * n_timepoints)
    return float(math.sqrt(sigma2)), int(values.size)


# --------------------------------------------------------------------------------------------
# Estimation pass


@dataclass
class _ChunkResult:
    theta: np.ndarray          # [n, P] raw estimates
    ok: np.ndarray             # [n] finite estimate
    out_of_bounds: np.ndarray  # [n, P]
    m0: np.ndarray             # [n] complex
    sigma2: np.ndarray         # [n] residual variance estimate
    std_unit: np.ndarray | None  # [n, P] sqrt(CRB) for σ = 1 (NaN where singular)


def _estimate_chunk(estimator: Estimator, model: SignalModel, y: np.ndarray,
                    device: torch.device, uncertainty: bool) -> _ChunkResult:
    from .crb import SingularFisherWarning, crb

    n, T = y.shape
    P = model.n_parameters
    signals = torch.from_numpy(np.ascontiguousarray(y)).to(device)
    theta = torch.as_tensor(estimator.predict(signals)).detach().to("cpu", torch.float64)
    if tuple(theta.shape) != (n, P):
        raise RuntimeError(f"estimator {estimator.name!r} returned shape {list(theta.shape)}, "
                           f"expected {[n, P]}")
    ok = torch.isfinite(theta).all(1)
    lo = torch.tensor([b[0] for b in model.bounds.values()], dtype=torch.float64)
    hi = torch.tensor([b[1] for b in model.bounds.values()], dtype=torch.float64)
    outside = ((theta < lo) | (theta > hi)) & ok[:, None]
    defaults = torch.tensor(list(model.defaults.values()), dtype=torch.float64)
    clipped = torch.where(ok[:, None], theta, defaults).clamp(lo, hi)
    th = clipped.to(device)
    with torch.no_grad():
        f = model.simulate(th)
    y128 = signals.to(torch.complex128)
    # Least-squares complex M0 given θ̂, reusing f for the residual.
    m0 = (f.conj() * y128).sum(-1) / (f.conj() * f).real.sum(-1).clamp_min(
        torch.finfo(torch.float64).tiny)
    rss = (y128 - m0[:, None] * f).abs().pow(2).sum(-1)
    dof = 2 * T - P - 2
    sigma2 = rss / dof if dof > 0 else torch.full_like(rss, float("nan"))
    std_unit = None
    if uncertainty:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SingularFisherWarning)
            var = crb(model, th, sigma=1.0, m0=m0, warn=False)
        std = var.sqrt().cpu().numpy()
        std_unit = np.where(np.isfinite(std), std, np.nan)
    return _ChunkResult(theta=theta.numpy(), ok=ok.numpy(), out_of_bounds=outside.numpy(),
                        m0=m0.cpu().numpy(), sigma2=sigma2.cpu().numpy(), std_unit=std_unit)


def apply_to_volume(estimator: Estimator, source: SignalSource, out_dir: str | Path,
                    mask: np.ndarray | None = None, sigma: float | None = None, *,
                    noise: str = "auto", chunk_size: int = 4096,
                    max_bytes: int = DEFAULT_MAX_BYTES, uncertainty: bool = True,
                    overwrite: bool = False, device: torch.device | str | None = None,
                    progress: bool = True, figure: bool = True,
                    ignore_sequence_hash: bool = False) -> ApplyResult:
    """Estimate parameter, M0, noise and uncertainty maps of a volume and write them.

    Args:
        estimator: anything with the :class:`~crbnet.estimator.Estimator` interface.
        source: the complex data (:class:`~crbnet.nifti.NiftiSignals` or
            :class:`~crbnet.nifti.ArraySignals`); the last axis must be the model's time axis.
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

    Files in ``out_dir``: ``<map>.nii.gz`` + ``.json`` per parameter (``T1map``, ``T2map``,
    ``TB1map``, else the parameter name; SI units), ``<map>_CRBstd.nii.gz`` + ``.json``,
    ``M0map.nii.gz`` (|M0|), ``M0phase.nii.gz`` (rad), ``sigma_residual.nii.gz`` (σ̂_v),
    ``flags.nii.gz`` (estimates at the edge of the estimator's range, bit per parameter),
    ``mask.nii.gz`` (estimated voxels), ``apply.json`` (summary) and ``maps.png``.
    """
    from tqdm.auto import tqdm

    started = time.time()
    model = estimator.model
    if tuple(estimator.parameters) != tuple(model.parameters):
        raise InputError(f"estimator parameters {list(estimator.parameters)} differ from its "
                         f"model's {list(model.parameters)}")
    source = as_model_input(source, model)
    check_compatible(source, model, ignore_sequence_hash)
    if noise not in NOISE_MODES:
        raise InputError(f"noise must be one of {', '.join(NOISE_MODES)}, got {noise!r}")
    if sigma is not None and not (math.isfinite(sigma) and sigma > 0):
        raise InputError("sigma must be a positive number")
    if chunk_size < 1:
        raise InputError("chunk size must be >= 1")
    shape = source.spatial_shape
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != shape:
            raise InputError(f"mask shape {list(mask.shape)} differs from the input grid "
                             f"{list(shape)}")
        if not mask.any():
            raise InputError("the mask is empty")
    out_dir = check_output_directory(out_dir, overwrite)
    device = torch.device(device or "cpu")
    T, P = source.n_timepoints, model.n_parameters

    # ---- survey pass (only without a mask: the mask must come from the data first)
    survey = None
    needs_background = sigma is None and noise in ("auto", "background")
    if mask is None:
        survey = _survey(source, model, max_bytes, auto_mask=True, progress=progress)
        mask = survey.auto_mask
        if not mask.any():
            raise InputError("the automatic mask is empty: no voxel has signal above the "
                             "noise (give --mask)")
    mask_requested = mask.copy()
    # With a given mask, the background power is gathered during the estimation pass (one
    # read of the data instead of two).
    background_power = None
    if survey is None and needs_background:
        background_power = np.full(shape, np.nan)

    # ---- estimation pass
    # Maps are written as float32; holding them so keeps a 256×256×64 volume's maps small.
    est = np.zeros(shape + (P,), dtype=np.float32)
    std_unit = np.full(shape + (P,), np.nan, dtype=np.float32) if uncertainty else None
    m0 = np.zeros(shape, dtype=np.complex128)
    sigma2 = np.full(shape, np.nan)
    used = np.zeros(shape, dtype=bool)
    nonfinite = np.zeros(shape, dtype=bool)
    failed = np.zeros(shape, dtype=bool)
    out_of_bounds = np.zeros(P, dtype=np.int64)
    n_todo = int(mask.sum())
    with tqdm(total=n_todo, unit="voxel", desc=f"{estimator.name}", file=sys.stderr,
              disable=None if progress else True) as bar:
        for block in source.blocks(max_bytes):
            bmask = mask[block]
            if not bmask.any() and background_power is None:
                continue
            data = source.read(block)
            if background_power is not None and not bmask.all():
                outside = data[~bmask]
                ok_bg = np.isfinite(outside).all(-1)
                values = np.full(outside.shape[0], np.nan)
                values[ok_bg] = (np.abs(outside[ok_bg]) ** 2).sum(-1) / (2 * T)
                background_power[block][~bmask] = values
            if not bmask.any():
                continue
            y = data[bmask]
            finite = np.isfinite(y).all(-1)
            bad_local = np.zeros(bmask.shape, dtype=bool)
            bad_local[bmask] = ~finite
            nonfinite[block] |= bad_local
            y = y[finite]
            good_local = np.zeros(bmask.shape, dtype=bool)
            good_local[bmask] = finite
            results: list[_ChunkResult] = []
            for start in range(0, y.shape[0], chunk_size):
                res = _estimate_chunk(estimator, model, y[start:start + chunk_size], device,
                                      uncertainty)
                results.append(res)
                bar.update(res.ok.size)
            bar.update(int((~finite).sum()))
            if not results:
                continue
            ok = np.concatenate([r.ok for r in results])
            out_of_bounds += np.concatenate([r.out_of_bounds for r in results]).sum(0)
            # Voxels with finite data: write their results, then drop failed estimates.
            est[block][good_local] = np.concatenate([r.theta for r in results])
            m0[block][good_local] = np.concatenate([r.m0 for r in results])
            sigma2[block][good_local] = np.concatenate([r.sigma2 for r in results])
            if uncertainty:
                std_unit[block][good_local] = np.concatenate([r.std_unit for r in results])
            ok_local = np.zeros(bmask.shape, dtype=bool)
            ok_local[good_local] = ok
            fail_local = good_local & ~ok_local
            failed[block] |= fail_local
            used[block] |= ok_local
    if not used.any():
        raise InputError("no voxel could be estimated (all masked voxels have NaN/Inf data or "
                         "failed estimates)")
    est[~used] = 0.0
    m0[~used] = 0.0
    sigma2[~used] = np.nan
    if uncertainty:
        std_unit[~used] = np.nan

    # ---- noise level
    dof = 2 * T - P - 2
    sigma_res_map = np.sqrt(sigma2)
    residual_sigma = float("nan")
    if dof > 0:
        residual_sigma = float(math.sqrt(np.nanmedian(sigma2[used]) / chi2_median_ratio(dof)))
    bg_sigma, bg_voxels = float("nan"), 0
    if survey is not None:
        background = survey.finite & ~mask_requested
        bg_sigma, bg_voxels = background_sigma(survey.power, background, T)
    elif background_power is not None:
        bg_sigma, bg_voxels = background_sigma(background_power, ~mask_requested, T)
    if sigma is not None:
        method, sigma_used = "given", float(sigma)
    elif noise == "background" or (noise == "auto" and math.isfinite(bg_sigma)):
        if not math.isfinite(bg_sigma):
            raise InputError(f"background noise needs at least {MIN_BACKGROUND_VOXELS} finite "
                             f"voxels outside the mask, found {bg_voxels}; use --noise residual "
                             "or --sigma")
        method, sigma_used = "background", bg_sigma
    elif noise in ("auto", "residual"):
        if not math.isfinite(residual_sigma):
            raise InputError("the residual noise estimate needs 2T > P + 2 time points; give "
                             "--sigma")
        method, sigma_used = "residual", residual_sigma
    else:  # voxel
        if dof <= 0:
            raise InputError("per-voxel residual noise needs 2T > P + 2 time points; give "
                             "--sigma")
        method, sigma_used = "voxel", float("nan")
    sigma_map = sigma_res_map if method == "voxel" else np.where(used, sigma_used, np.nan)

    # ---- maps
    names = [map_name(p) for p in model.parameters]
    maps: dict[str, np.ndarray] = {}
    for j, name in enumerate(names):
        maps[name] = est[..., j]
    n_singular = {}
    if uncertainty:
        for j, name in enumerate(names):
            std = std_unit[..., j] * sigma_map
            maps[f"{name}_CRBstd"] = np.where(used, std, 0.0)
            n_singular[model.parameters[j]] = int((used & ~np.isfinite(std)).sum())
    ranges = estimator_ranges(estimator)
    at_edge = edge_flags(est, model, ranges) & used[..., None]
    maps["flags"] = (at_edge * (1 << np.arange(P))).sum(-1)
    maps["M0map"] = np.abs(m0)
    maps["M0phase"] = np.where(used, np.angle(m0), 0.0)
    maps["sigma_residual"] = np.where(used, np.nan_to_num(sigma_res_map, nan=0.0), 0.0)

    mean_m0 = float(np.abs(m0[used]).mean())
    ratio = sigma_res_map[used] / (sigma_map[used] if method != "voxel" else sigma_res_map[used])
    summary: dict[str, Any] = {
        "crbnet_version": __version__,
        "estimator": estimator.name,
        "estimator_type": type(estimator).__name__,
        "model": model.name,
        "parameters": list(model.parameters),
        "units": model.units,
        "fixed": model.fixed,
        "sequence_hash": sequence_hash(model.sequence),
        "input": source.description,
        "grid": list(shape),
        "n_timepoints": T,
        "voxels": {
            "in_grid": int(np.prod(shape)),
            "in_mask": int(mask_requested.sum()),
            "mask_source": "automatic (subspace energy test)" if survey is not None and
                           survey.auto_mask is not None else "given",
            "nonfinite_input": int(nonfinite.sum()),
            "failed_estimates": int(failed.sum()),
            "estimated": int(used.sum()),
            "out_of_bounds": dict(zip(model.parameters, (int(v) for v in out_of_bounds))),
            "crb_singular": n_singular,
            "at_range_edge": dict(zip(model.parameters,
                                      (int(v) for v in at_edge.sum(tuple(range(len(shape))))))),
        },
        "estimator_ranges": {p: list(r) for p, r in ranges.items()},
        "range_edge_definition": f"estimate within {EDGE_FRACTION:g} of the estimator's range "
                                 "width of either end (log scale for log-uniform parameters), or "
                                 "outside; flags.nii.gz bit j (value 2^j) = parameter j",
        "basis": model.describe().get("basis"),
        "noise": {
            "method": method,
            "sigma": sigma_used if method != "voxel" else None,
            "sigma_definition": "std of the real and of the imaginary part of the noise",
            "sigma_background": bg_sigma if math.isfinite(bg_sigma) else None,
            "background_voxels": bg_voxels,
            "sigma_residual_median": residual_sigma if math.isfinite(residual_sigma) else None,
            "sigma_complement": survey.sigma_complement if survey is not None else None,
            "residual_dof": dof,
            "median_residual_to_sigma": float(np.nanmedian(ratio)) if method != "voxel" else 1.0,
        },
        "snr": {
            "mean_abs_m0_over_sigma": (mean_m0 / sigma_used) if method != "voxel" else
            float(np.nanmean(np.abs(m0[used]) / sigma_res_map[used])),
            "definition": SNR_DEFINITION + " (mean |M0| over the estimated voxels)",
        },
        "uncertainty": ("sqrt(CRB) at the estimated parameters and |M0|, scaled by the noise "
                        "level (docs/statistics.md §2)" + (" — the CRB of the subspace "
                                                           "coefficients" if
                                                           model.describe().get("basis") else "")
                        + "; NaN where the Fisher matrix is singular")
        if uncertainty else None,
        "seconds": None,
    }

    # ---- write (all or nothing)
    units = model.units
    common = {"Estimator": estimator.name, "EstimatorType": type(estimator).__name__,
              "Model": model.name, "SequenceHash": summary["sequence_hash"],
              "FixedParameters": model.fixed, "Software": f"crbnet {__version__}",
              "Input": source.description}
    ref = source.reference()
    written: list[str] = []
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        def put(name: str, data: np.ndarray, meta: dict, dtype: Any = np.float32) -> None:
            write_image(tmp / f"{name}.nii.gz", data, ref, dtype=dtype, description=name)
            write_sidecar(tmp / f"{name}.nii.gz", meta)
            written.append(f"{name}.nii.gz")

        for j, (p, name) in enumerate(zip(model.parameters, names)):
            spec = model.spec(p)
            put(name, maps[name], {"Parameter": p, "Units": units[p] or "1",
                                   "Description": spec.description,
                                   "Bounds": list(spec.bounds), **common})
            if uncertainty:
                put(f"{name}_CRBstd", maps[f"{name}_CRBstd"], {
                    "Parameter": p, "Units": units[p] or "1",
                    "Description": f"Cramér–Rao standard deviation of {p}: "
                                   f"{summary['uncertainty']}",
                    "NoiseMethod": method, "Sigma": summary["noise"]["sigma"],
                    "SingularVoxels": n_singular[p], **common})
        put("M0map", maps["M0map"], {"Units": "arbitrary (input units)",
                                     "Description": "|M0|, least-squares given the estimates",
                                     **common})
        put("M0phase", maps["M0phase"], {"Units": "rad", "Description": "phase of M0", **common})
        put("sigma_residual", maps["sigma_residual"], {
            "Units": "arbitrary (input units)",
            "Description": "per-voxel residual noise level sqrt(|y - M0 f|^2 / (2T - P - 2))",
            **common})
        put("flags", maps["flags"], {
            "Description": "bit j (value 2^j) set where parameter j's estimate sits at the edge "
                          "of the range the estimator knows: " + ", ".join(
                              f"{1 << j} {p} [{ranges[p][0]:g}, {ranges[p][1]:g}]"
                              for j, p in enumerate(model.parameters)), **common},
            np.uint8 if P <= 8 else np.uint16)
        put("mask", used, {"Description": "voxels that were estimated (mask minus NaN/Inf "
                                          "data and failed estimates)", **common}, np.uint8)
        summary["seconds"] = round(time.time() - started, 2)
        summary["files"] = written + ["apply.json"] + (["maps.png"] if figure else [])
        from .io import write_json
        write_json(tmp / "apply.json", summary)
        if figure:
            _figure(maps, names, model, used, uncertainty, estimator.name, method, sigma_used,
                    tmp / "maps.png")
    return ApplyResult(out_dir=Path(out_dir), maps=maps, mask=used, sigma=sigma_used,
                       summary=summary)


def _figure(maps: dict[str, np.ndarray], names: list[str], model: SignalModel, used: np.ndarray,
            uncertainty: bool, estimator_name: str, method: str, sigma: float, path: Path) -> None:
    from .plots.maps import plot_parameter_maps

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


__all__ = ["apply_to_volume", "ApplyResult", "map_name", "MAP_NAMES", "NOISE_MODES",
           "check_compatible", "check_basis", "as_model_input", "ProjectedSource",
           "estimator_ranges", "edge_flags", "EDGE_FRACTION", "background_sigma", "chi2_median_ratio"]
