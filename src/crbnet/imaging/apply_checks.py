"""Checks before ``crbnet apply`` reads any data: the estimator, the arguments, the mask and
whether the input was acquired with the estimator's sequence (and basis)."""

from __future__ import annotations

import math

import numpy as np

from crbnet.errors import InputError
from crbnet.estimators.protocol import Estimator
from crbnet.imaging.signal_sources import SignalSource
from crbnet.imaging.noise_level import NOISE_MODES
from crbnet.physics.models.base import SignalModel
from crbnet.physics.sequences import sequence_hash


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


def checked_mask(mask: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    """``mask`` as a bool array of the input grid ``shape`` (None stays None: found from the
    data); InputError for another shape or an empty mask."""
    if mask is None:
        return None
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != shape:
        raise InputError(f"mask shape {list(mask.shape)} differs from the input grid "
                         f"{list(shape)}")
    if not mask.any():
        raise InputError("the mask is empty")
    return mask


def check_arguments(estimator: Estimator, noise: str, sigma: float | None,
                    chunk_size: int) -> None:
    """The estimator matches its model; ``noise``, ``sigma`` and ``chunk_size`` are valid."""
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
