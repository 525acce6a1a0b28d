"""Calling an estimator: the one place that runs ``predict`` (or ``predict_with_fit``), checks
what comes back and times it.

Every caller (``crbnet evaluate``, ``compare``, ``apply``) goes through :func:`checked_predict`,
so an estimator of one's own that returns the wrong shape, complex numbers or no array at all
is refused with the same one-line :class:`~crbnet.errors.InputError` wherever it is used.
Non-finite estimates are not an error: they are a failed estimate of that voxel, which each
caller counts (``finite`` marks the good rows).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from crbnet.errors import InputError
from crbnet.estimators.protocol import Estimator, SignalFit


@dataclass
class Prediction:
    """What one call of an estimator gave.

    Attributes:
        theta: [N, P] float64 estimates on the CPU (SI; may hold NaN/Inf for failed voxels).
        finite: [N] bool, True where every parameter of the row is finite.
        seconds: wall time of the ``predict`` call itself (conversion and checks excluded).
        fit: the estimator's own fit (:class:`~crbnet.estimators.protocol.SignalFit`) when it
            was asked for and the estimator offers ``predict_with_fit``; else None.
    """

    theta: torch.Tensor
    finite: torch.Tensor
    seconds: float
    fit: SignalFit | None = None


def checked_predict(estimator: Estimator, signals: torch.Tensor, *,
                    with_fit: bool = False) -> Prediction:
    """Run ``estimator`` on ``signals`` [N, T] (without autograd) and check its answer.

    Args:
        estimator: anything with ``model``, ``name`` and ``predict(signals) -> [N, P]``.
        signals: the complex signals, one row per voxel.
        with_fit: call ``predict_with_fit`` instead of ``predict`` when the estimator has it
            (its M0 and residual then need no simulation of ``f(θ̂)``).

    Raises:
        InputError: the estimator returned something other than real numbers of shape
            [N, P] (P = its model's number of parameters).
    """
    use_fit = with_fit and hasattr(estimator, "predict_with_fit")
    start = time.perf_counter()
    with torch.no_grad():
        if use_fit:
            fit = estimator.predict_with_fit(signals)
            raw = fit.theta
        else:
            fit, raw = None, estimator.predict(signals)
    seconds = time.perf_counter() - start
    theta = _as_estimates(raw, estimator, int(signals.shape[0]))
    return Prediction(theta=theta, finite=torch.isfinite(theta).all(1), seconds=seconds,
                      fit=fit)


def warm_up(estimator: Estimator, signals: torch.Tensor) -> None:
    """One untimed call on the first two voxels: lazy set-up (a dictionary's simulation, a
    network's first kernels) then stays out of the timed calls."""
    checked_predict(estimator, signals[:2])


def _as_estimates(raw: object, estimator: Estimator, n_voxels: int) -> torch.Tensor:
    """``raw`` as a [N, P] float64 CPU tensor, or one clear line saying what is wrong."""
    name = getattr(estimator, "name", type(estimator).__name__)
    if isinstance(raw, np.ndarray):
        raw = torch.from_numpy(np.ascontiguousarray(raw))
    if not isinstance(raw, torch.Tensor):
        raise InputError(f"estimator {name!r} returned {type(raw).__name__}, not a tensor or "
                         "array of estimates")
    if raw.is_complex() or raw.dtype == torch.bool:
        raise InputError(f"estimator {name!r} returned {raw.dtype} estimates; real numbers "
                         "are needed")
    expected = [n_voxels, estimator.model.n_parameters]
    if list(raw.shape) != expected:
        raise InputError(f"estimator {name!r} returned shape {list(raw.shape)}, expected "
                         f"{expected} (one row of parameters per voxel)")
    return raw.detach().to("cpu", torch.float64)
