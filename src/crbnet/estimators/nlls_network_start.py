"""NLLS started from a trained network: the maximum-likelihood fit at a fraction of the cost.

:class:`~crbnet.estimators.nlls.NLLSEstimator` starts every voxel from the best atoms of a
coarse dictionary, which lie many CRB standard deviations from the optimum, and iterates to a
tolerance (``gtol = 1e-8``) set for a reference fit. A network trained for the same model,
sequence and basis already lands within a few √CRB of the optimum, so Levenberg–Marquardt
from there needs a few Gauss–Newton steps, and none of the dictionary's simulations.

Tolerance. With the gradient cosine ``c = max_p |J_pᵀ r| / (‖J_p‖·‖r‖)`` the distance to the
exact optimum is about ``c·‖r‖/σ ≈ c·√d`` standard deviations (d = 2T − P − 2 degrees of
freedom, ‖r‖² ≈ d σ² at the optimum) — see :mod:`crbnet.estimators.nlls`. For K = 15 complex
coefficients d = 20 and the default ``gtol = 1e-3`` leaves the estimate ~0.005 √CRB from the
optimum, 200 times inside the statistical error; ``xtol = 1e-5`` (relative step) is of the same
order for parameters known to a few per cent. ``ftol = 1e-6``: a voxel also stops when the
actual and the predicted relative cost reductions are both below it; near the optimum the
predicted reduction is the cost still above the minimum, so at most ~1e-6·‖r‖²/σ² ≈ 2e-5 in
χ² is left, i.e. ~0.005 √CRB (measured on 282 in-vivo voxels against ``ftol = 1e-10``: every
parameter within 0.07 √CRB, residual levels equal to 7e-4, a third less CPU time).

Starts: the network's estimate (clipped just inside the box) and, optionally, the same point
with the sign of one parameter flipped (``flip``, e.g. ``omega0``: with RF pulses about one
axis the signal at −ω0 is the complex conjugate of that at +ω0, so with a free complex M0 the
two are close for small |ω0| and a network trained with a squared-error loss cannot always tell
them apart); the start with the lower final cost wins.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from crbnet.errors import InputError
from crbnet.estimators.nlls import NLLSFit, levenberg_marquardt
from crbnet.estimators.protocol import SignalFit, as_signal_tensor, register_estimator
from crbnet.physics.models.base import SignalModel, resolve_ranges

#: Fraction of the box width a start is kept away from a bound (a start on a bound freezes
#: that parameter's first steps).
_INSIDE = 1e-6


def _check_settings(checkpoint: object, max_iter: object, chunk_size: object,
                    **tolerances: object) -> None:
    """One-line errors for the options, before the network is loaded."""
    if checkpoint is None:
        raise InputError("nlls_network needs the network it starts from: --option "
                         "checkpoint=PATH")
    for name, value in (("max_iter", max_iter), ("chunk_size", chunk_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"nlls_network: {name} must be a whole number >= 1, got {value!r}")
    for name, value in tolerances.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise InputError(f"nlls_network: {name} must be a number >= 0, got {value!r}")


@register_estimator("nlls_network", "NLLS (Levenberg-Marquardt) started from a trained "
                                    "network's estimate (option checkpoint)",
                    needs_checkpoint=True)
class NetworkStartedNLLS:
    """Voxel-wise NLLS of ``model`` started from the network in ``checkpoint``.

    Args:
        model: the signal model (a :class:`~crbnet.stats.projected.ProjectedModel` for subspace
            coefficients; the network must have been trained in that basis), or None for the
            checkpoint's own model. It may differ from the network's model if the sequence is
            the same and the network estimates all its parameters (starts go by name).
        checkpoint: checkpoint file or run directory (``crbnet train``).
        flip: a parameter whose sign is flipped for a second start ('' = one start only).
        bounds: ``{name: (low, high)}`` (SI) box of the fit; default the model's bounds.
        max_iter, gtol, xtol, ftol: Levenberg–Marquardt limits (module docstring).
        chunk_size: voxels fitted together.
        device: where the fit runs.
    """

    name = "nlls_network"
    needs_checkpoint = True

    def __init__(self, model: SignalModel | None, checkpoint: str | Path | None = None,
                 flip: str = "", bounds: Mapping[str, tuple[float, float]] | None = None,
                 max_iter: int = 50, gtol: float = 1e-3, xtol: float = 1e-5, ftol: float = 1e-6,
                 chunk_size: int = 1024, device: torch.device | str | None = None) -> None:
        from crbnet.estimators.network import load

        _check_settings(checkpoint, max_iter, chunk_size, gtol=gtol, xtol=xtol, ftol=ftol)
        network = load(checkpoint, device=device)
        self.model = model if model is not None else network.model
        self.columns = _start_columns(network, getattr(self.model, "base", self.model),
                                      str(checkpoint))
        basis = getattr(self.model, "basis", None)
        self.network = network.in_basis(basis) if basis is not None else network
        if flip and flip not in self.model.parameters:
            raise InputError(f"flip: {flip!r} is not an estimated parameter "
                             f"({', '.join(self.model.parameters)})")
        self.flip = flip
        self.max_iter, self.chunk_size = int(max_iter), int(chunk_size)
        self.gtol, self.xtol, self.ftol = float(gtol), float(xtol), float(ftol)
        self.bounds = resolve_ranges(self.model, bounds, base=self.model.bounds, what="bounds")
        self.device = torch.device(device) if device is not None else torch.device("cpu")

    @property
    def parameters(self) -> tuple[str, ...]:
        return self.model.parameters

    def _box(self) -> tuple[torch.Tensor, torch.Tensor]:
        lower = torch.tensor([self.bounds[p][0] for p in self.parameters], dtype=torch.float64,
                             device=self.device)
        upper = torch.tensor([self.bounds[p][1] for p in self.parameters], dtype=torch.float64,
                             device=self.device)
        return lower, upper

    def starts(self, y: torch.Tensor) -> torch.Tensor:
        """Start points [N·S, P] (S = 1, or 2 with ``flip``: voxel-major), inside the box."""
        lower, upper = self._box()
        margin = _INSIDE * (upper - lower)
        theta0 = self.network.predict(y).to(self.device, torch.float64)[:, self.columns]
        theta0 = torch.maximum(torch.minimum(torch.nan_to_num(theta0), upper - margin),
                               lower + margin)
        if not self.flip:
            return theta0
        mirrored = theta0.clone()
        j = self.parameters.index(self.flip)
        mirrored[:, j] = torch.clamp(-mirrored[:, j], lower[j] + margin[j], upper[j] - margin[j])
        return torch.stack((theta0, mirrored), 1).reshape(-1, theta0.shape[1])

    def fit(self, signals: torch.Tensor | np.ndarray) -> NLLSFit:
        """Fit every voxel of ``signals`` [N, T] (complex); results on the CPU."""
        y_all = as_signal_tensor(signals, self.model.n_timepoints, device=self.device)
        lower, upper = self._box()
        S = 2 if self.flip else 1
        parts: list[NLLSFit] = []
        for v0 in range(0, y_all.shape[0], self.chunk_size):
            y = y_all[v0:v0 + self.chunk_size]
            res = levenberg_marquardt(self.model, y.repeat_interleave(S, 0), self.starts(y),
                                      lower, upper, self.max_iter, self.gtol, self.xtol,
                                      self.ftol)
            finite_cost = torch.nan_to_num(res.cost, nan=math.inf)    # a NaN start never wins
            pick = torch.arange(y.shape[0], device=self.device) * S + finite_cost.view(-1, S).argmin(1)
            parts.append(NLLSFit(*(getattr(res, f)[pick] for f in _FIELDS)))
        if not parts:
            P = len(self.parameters)
            empty = torch.zeros(0, dtype=torch.float64)
            return NLLSFit(torch.zeros(0, P, dtype=torch.float64), empty.to(torch.complex128),
                           empty, empty.bool(), empty.long(), empty)
        return NLLSFit(**{f: torch.cat([getattr(p, f) for p in parts]).cpu() for f in _FIELDS})

    def predict_with_fit(self, signals: torch.Tensor | np.ndarray) -> SignalFit:
        """Estimates with their least-squares M0 and residual energy (the final cost)."""
        res = self.fit(signals)
        return SignalFit(theta=res.theta, m0=res.m0, rss=res.cost)

    def predict_with_m0(self, signals: torch.Tensor | np.ndarray
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        res = self.fit(signals)
        return res.theta, res.m0

    def predict(self, signals: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Parameters [N, P] (float64, SI, order of ``parameters``)."""
        return self.fit(signals).theta

    def __repr__(self) -> str:
        return (f"NetworkStartedNLLS(model={self.model.name}, network={self.network.name}, "
                f"flip={self.flip!r}, max_iter={self.max_iter}, gtol={self.gtol:g}, "
                f"xtol={self.xtol:g})")


def _start_columns(network, model: SignalModel, source: str) -> list[int]:
    """Columns of the network's output that start ``model``'s parameters, by name. The network
    may have been trained for another model (e.g. another lineshape, or mt_hybrid_state started
    from an mt_generalized_bloch network) as long as it reads the same sequence and estimates
    every parameter ``model`` fits; anything else is refused with one line."""
    from crbnet.physics.sequences import sequence_hash

    theirs, ours = sequence_hash(network.model.sequence), sequence_hash(model.sequence)
    if theirs != ours:
        raise InputError(f"{source} was trained for sequence {theirs}, the data follow {ours}")
    missing = [p for p in model.parameters if p not in network.parameters]
    if missing:
        raise InputError(f"{source} does not estimate {', '.join(missing)}: it cannot start "
                         f"a fit of {model.name} [{', '.join(model.parameters)}]")
    return [list(network.parameters).index(p) for p in model.parameters]


_FIELDS = ("theta", "m0", "cost", "converged", "n_iter", "gradient_cosine")

__all__ = ["NetworkStartedNLLS"]
