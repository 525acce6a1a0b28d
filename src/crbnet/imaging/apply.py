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

The library draws and prints nothing: progress goes to a caller's
:class:`~crbnet.progress.ProgressFactory` (silent by default), and ``maps.png`` is drawn by a
figure writer the caller passes (``crbnet apply`` passes
:func:`crbnet.plots.apply_figure.draw_apply_maps`).

Where each part lives: the checks in :mod:`~crbnet.imaging.apply_checks`, the projected source
in :mod:`~crbnet.imaging.projected_source`, the estimator ranges and edge flags in
:mod:`~crbnet.imaging.estimator_ranges`, the survey and automatic mask in
:mod:`~crbnet.imaging.survey`, the estimation of a chunk of voxels in
:mod:`~crbnet.imaging.chunk_estimates` and of the whole volume in
:mod:`~crbnet.imaging.estimation_pass`, the noise level in :mod:`~crbnet.imaging.noise_level`,
the maps in :mod:`~crbnet.imaging.apply_maps`, ``apply.json`` in
:mod:`~crbnet.imaging.apply_summary`, the files in :mod:`~crbnet.imaging.apply_outputs` and the
stage timing in :mod:`~crbnet.imaging.stage_times`. This module runs them in order.
"""


from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from crbnet.errors import InputError
from crbnet.estimators.protocol import Estimator
from crbnet.imaging.apply_checks import check_arguments, check_basis, check_compatible, checked_mask
from crbnet.imaging.apply_maps import map_name, parameter_maps
from crbnet.imaging.apply_outputs import write_outputs
from crbnet.imaging.apply_summary import summary as apply_summary
from crbnet.imaging.estimation_pass import Estimates, PassSettings, estimation_pass
from crbnet.imaging.estimator_ranges import EDGE_FRACTION, edge_flags, estimator_ranges
from crbnet.imaging.noise_level import (
    MIN_BACKGROUND_VOXELS,
    NOISE_MODES,
    background_sigma,
    chi2_median_ratio,
    noise_level,
)
from crbnet.imaging.output_folders import check_output_directory
from crbnet.imaging.projected_source import ProjectedSource, as_model_input
from crbnet.imaging.signal_sources import DEFAULT_MAX_BYTES, SignalSource
from crbnet.imaging.stage_times import StageTimes
from crbnet.imaging.survey import AUTO_MASK_FALSE_ALARM, Survey, survey
from crbnet.physics.models.base import SignalModel
from crbnet.progress import ProgressFactory


@dataclass
class ApplyResult:
    """What :func:`apply_to_volume` wrote and found.

    Attributes:
        out_dir: the output folder.
        maps: ``{file stem: array}`` of every written map (grid shape).
        mask: bool grid of the voxels that were estimated.
        sigma: the noise level used for the uncertainty maps (scalar; NaN for ``"voxel"``).
        summary: the content of ``apply.json``.
        map_names: ``{parameter: file stem of its map}`` (e.g. ``{"T1": "T1map"}``).
    """

    out_dir: Path
    maps: dict[str, np.ndarray]
    mask: np.ndarray
    sigma: float
    summary: dict = field(default_factory=dict)
    map_names: dict[str, str] = field(default_factory=dict)


#: A figure writer: ``figure(result, path)`` draws ``result``'s maps to ``path`` (``maps.png``
#: in the output folder, before the folder is renamed into place).
FigureWriter = Callable[[ApplyResult, Path], None]


def apply_to_volume(estimator: Estimator, source: SignalSource, out_dir: str | Path,
                    mask: np.ndarray | None = None, sigma: float | None = None, *,
                    noise: str = "auto", chunk_size: int = 4096,
                    max_bytes: int = DEFAULT_MAX_BYTES, uncertainty: bool = True,
                    overwrite: bool = False, device: torch.device | str | None = None,
                    progress: ProgressFactory | bool | None = None,
                    figure: FigureWriter | bool | None = None,
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
        progress: a :class:`~crbnet.progress.ProgressFactory` for the survey and estimation
            bars; None (or False) reports nothing.
        figure: ``figure(result, path)`` draws ``maps.png`` into the output folder (e.g.
            :func:`crbnet.plots.apply_figure.draw_apply_maps`); None (or False): no figure.
        ignore_sequence_hash: accept data whose sidecar names another sequence.

    Returns:
        an :class:`ApplyResult`.

    Files in ``out_dir``: ``<map>.nii.gz`` + ``.json`` per parameter (the model's map names,
    e.g. ``T1map``, ``T2map``, ``TB1map``, else the parameter name; SI units),
    ``<map>_CRBstd.nii.gz`` + ``.json``, ``M0map.nii.gz`` (|M0|), ``M0phase.nii.gz`` (rad),
    ``sigma_residual.nii.gz`` (σ̂_v), ``flags.nii.gz`` (estimates at the edge of the
    estimator's range, bit per parameter), ``mask.nii.gz`` (estimated voxels), ``apply.json``
    (summary, with the seconds per stage) and, with ``figure``, ``maps.png``.
    """
    started = time.perf_counter()
    times = StageTimes()
    model = estimator.model
    check_arguments(estimator, noise, sigma, chunk_size)
    figure = _figure_writer(figure)
    source = as_model_input(source, model)
    check_compatible(source, model, ignore_sequence_hash)
    mask = checked_mask(mask, source.spatial_shape)
    out_dir = Path(check_output_directory(out_dir, overwrite))
    settings = PassSettings(chunk_size=chunk_size, device=torch.device(device or "cpu"),
                            uncertainty=uncertainty, max_bytes=max_bytes,
                            progress=progress)
    found = None
    if mask is None:             # the mask must come from the data first: a survey pass
        with times.stage("survey"):
            found = _survey_for_mask(source, model, settings)
        mask = found.auto_mask
    # With a given mask, the background power is gathered during the estimation pass.
    gather_background = found is None and sigma is None and noise in ("auto", "background")
    est = estimation_pass(estimator, model, source, mask, gather_background, settings, times)
    level = noise_level(est.sigma2, est.used, _background(found, est, mask),
                        source.n_timepoints, model.n_parameters, sigma, noise)
    names = [model.map_name(p) for p in model.parameters]
    ranges = estimator_ranges(estimator)
    maps, n_singular, at_edge = parameter_maps(est, level, model, names, ranges)
    report = apply_summary(estimator, model, source, est, level, mask, found is not None,
                           n_singular, at_edge, ranges, uncertainty)
    if found is not None:
        report["noise"]["sigma_complement"] = found.sigma_complement
    result = ApplyResult(out_dir=out_dir, maps=maps, mask=est.used, sigma=level.sigma,
                         summary=report, map_names=dict(zip(model.parameters, names)))

    with times.stage("write"):
        write_outputs(out_dir, overwrite, source, model, estimator, maps, names, est.used,
                      report, ranges, None if figure is None else (lambda p: figure(result, p)),
                      lambda summary: _add_timing(summary, times, started))
    return result


def _add_timing(summary: dict, times: StageTimes, started: float) -> None:
    """``seconds`` (the whole run so far) and ``seconds_by_stage`` into ``summary``."""
    total = time.perf_counter() - started
    summary["seconds"] = round(total, 2)
    summary["seconds_by_stage"] = times.report(total)


def _survey_for_mask(source: SignalSource, model: SignalModel, settings: PassSettings) -> Survey:
    """The survey pass that finds the automatic mask; InputError when it is empty."""
    found = survey(source, model, settings.max_bytes, auto_mask=True, progress=settings.progress)
    if not found.auto_mask.any():
        raise InputError("the automatic mask is empty: no voxel has signal above the "
                         "noise (give --mask)")
    return found


def _figure_writer(figure: FigureWriter | bool | None) -> FigureWriter | None:
    """The caller's figure writer; None or False for none. ``True`` (the old switch for a
    figure the library drew itself) is refused: the library draws nothing."""
    if figure is None or figure is False:
        return None
    if not callable(figure):
        raise InputError("figure must be a function figure(result, path), e.g. "
                         "crbnet.plots.apply_figure.draw_apply_maps, or None")
    return figure


def _background(found: Survey | None, est: Estimates, mask: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray] | None:
    """(noise power, noise-only voxels) for the background noise estimate: from the survey
    (finite voxels outside the mask), else from the estimation pass, else None."""
    if found is not None:
        return found.power, found.finite & ~mask
    if est.background_power is not None:
        return est.background_power, ~mask
    return None


__all__ = ["apply_to_volume", "ApplyResult", "FigureWriter", "map_name", "NOISE_MODES",
           "StageTimes", "check_compatible", "check_basis", "as_model_input", "ProjectedSource",
           "estimator_ranges", "edge_flags", "EDGE_FRACTION", "background_sigma",
           "chi2_median_ratio", "MIN_BACKGROUND_VOXELS", "AUTO_MASK_FALSE_ALARM"]
