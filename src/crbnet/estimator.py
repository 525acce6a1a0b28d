"""What every estimator (network, NLLS, dictionary matching) offers, and shared helpers.

An estimator has ``model`` (a :class:`~crbnet.models.base.SignalModel`), ``parameters`` (the
names of the estimated parameters, in column order), ``name`` (short label for reports) and
``predict(signals) -> Tensor [N, P]`` (SI units), where ``signals`` is a complex tensor or
array ``[N, T]`` — the full time series as the model simulates it, with arbitrary complex M0.

An estimator that fits the signal itself (dictionary matching, NLLS) may also offer
``predict_with_fit(signals) -> SignalFit``: the estimates with the complex M0 and the residual
energy of its fit, so that a caller (``crbnet apply``) need not simulate ``f(θ̂)`` again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from .errors import InputError
from .models.base import SignalModel


@runtime_checkable
class Estimator(Protocol):
    model: SignalModel
    name: str

    @property
    def parameters(self) -> tuple[str, ...]: ...

    def predict(self, signals: torch.Tensor | np.ndarray) -> torch.Tensor: ...


@dataclass
class SignalFit:
    """An estimator's fit of N voxels ``y ≈ M0·f(θ̂)``.

    Attributes:
        theta: [N, P] float64 estimates (SI).
        m0: [N] complex128 least-squares M0 given θ̂ (input units).
        rss: [N] float64 residual energy ``‖y − M0·f(θ̂)‖²`` (input units squared).
    """

    theta: torch.Tensor
    m0: torch.Tensor
    rss: torch.Tensor


def least_squares_m0(f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Complex M0 minimizing ``‖y − M0·f‖²`` per row: ``fᴴy / fᴴf`` ([N] from [N, T] each; a
    zero ``f`` gives M0 = 0)."""
    energy = (f.real.square() + f.imag.square()).sum(-1) if f.is_complex() else f.square().sum(-1)
    return (f.conj() * y).sum(-1) / energy.clamp_min(torch.finfo(energy.dtype).tiny)


def _all_finite(x: torch.Tensor) -> bool:
    """Whether every element is finite. A NaN or Inf anywhere makes the sum non-finite, so one
    reduction answers almost always; only a non-finite sum (which huge finite values could
    also give, by overflow) needs the element-wise check."""
    return bool(torch.isfinite(x.sum())) or bool(torch.isfinite(torch.view_as_real(x)).all())


def as_signal_tensor(signals: torch.Tensor | np.ndarray, n_timepoints: int,
                     dtype: torch.dtype | None = torch.complex128,
                     device: torch.device | str | None = None) -> torch.Tensor:
    """Check and convert measured signals to a complex tensor [N, T] (``dtype=None`` keeps the
    input's complex dtype).

    Raises :class:`InputError` for a real-valued input, a wrong number of time points, or
    NaN/Inf values (mask those voxels out first).
    """
    if isinstance(signals, np.ndarray):
        signals = torch.from_numpy(np.ascontiguousarray(signals))
    if not isinstance(signals, torch.Tensor):
        raise InputError(f"signals must be a tensor or array, got {type(signals).__name__}")
    if not signals.is_complex():
        raise InputError("signals must be complex (real and imaginary part); for magnitude and "
                         "phase data combine them as magnitude·exp(i·phase) first")
    if signals.ndim == 1:
        signals = signals[None]
    if signals.ndim != 2:
        raise InputError(f"signals must have shape [N, T], got {list(signals.shape)}")
    if signals.shape[1] != n_timepoints:
        raise InputError(f"signals have {signals.shape[1]} time points but the sequence has "
                         f"{n_timepoints}")
    if not _all_finite(signals):
        raise InputError("signals contain NaN or Inf")
    return signals.to(dtype=dtype or signals.dtype,
                      device=device if device is not None else signals.device)
