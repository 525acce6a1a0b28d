"""Gross errors of an estimate whose truth is known: local minimum or alternative solution.

A voxel's estimate is a *gross error* when some parameter (with a finite CRB) is off by more
than ``threshold``·√CRB (default 5). Each gross error is classified by the data cost with M0
projected out, ``C(θ) = min over complex M0 of ‖M0·f(θ) − y‖² = ‖y‖² − |fᴴy|²/‖f‖²``, at the
estimate (clipped into the model's bounds) against the cost at the true θ:

* **local minimum** — ``C(θ̂) > C(θ)``: the estimate explains the data worse than the truth
  does, so a better answer existed and the estimator missed it;
* **alternative solution** — ``C(θ̂) ≤ C(θ)``: the data themselves prefer (or tie with) another
  θ — the problem's ambiguity at that noise draw, which no local bound describes and no
  estimator can undo without a prior.

The split is defined for every estimator, because it only needs the estimate, the data and the
truth; what "missed a better answer" means depends on the estimator:

* NLLS minimizes ``C`` itself, so ``C(θ̂) > C(θ)`` is literally a local minimum (or a stop at
  the edge of its search box, which is then the box's doing);
* a dictionary minimizes ``C`` over its atoms, so a cost above the truth's is the spacing of
  its grid (or an atom set that does not cover the truth);
* a network does not minimize ``C`` at all; a cost above the truth's is its own error (shrinkage
  towards its training prior shows up here), while a cost at or below it is an ambiguity the
  network shares with every other estimator.

The labels stay ``local_minimum`` / ``alternative`` for all estimators so that tables line up.
Used by ``crbnet evaluate`` (grid, samples and ``--points``), ``crbnet compare`` and the
benchmarks; there is no other implementation.
"""

from __future__ import annotations

import torch

from crbnet.stats.metrics import crb_normalized
from crbnet.physics.models.base import SignalModel

#: A realization is a gross error when some parameter is off by more than this many √CRB.
GROSS_ERROR_THRESHOLD = 5.0

#: Keys of :func:`classify_gross_errors`.
KINDS = ("gross", "local_minimum", "alternative")


def projected_cost(model: SignalModel, theta: torch.Tensor, signals: torch.Tensor
                   ) -> torch.Tensor:
    """[N] ``min over complex M0 of ‖M0·f(θ) − y‖² = ‖y‖² − |fᴴy|²/‖f‖²``."""
    f = model.simulate(theta.to(torch.float64)).to(torch.complex128)
    y = signals.to(torch.complex128)
    fy = (f.conj() * y).sum(-1)
    return (y.abs() ** 2).sum(-1) - fy.abs() ** 2 / (f.abs() ** 2).sum(-1)


def classify_gross_errors(model: SignalModel, signals: torch.Tensor, estimates: torch.Tensor,
                          truth: torch.Tensor, crb: torch.Tensor,
                          threshold: float = GROSS_ERROR_THRESHOLD) -> dict[str, torch.Tensor]:
    """Per voxel: ``gross`` (error > threshold·√CRB in a parameter with finite CRB),
    ``local_minimum`` (gross, final cost above the truth's) and ``alternative`` (gross, cost at
    or below the truth's); [N] bool each. Non-finite estimates are neither.

    Args:
        model: the signal model the data come from.
        signals: [N, T] complex measurements.
        estimates: [N, P] estimates (SI; NaN/Inf for a failed estimate).
        truth: [N, P] true parameters (SI).
        crb: [N, P] CRB of each voxel at its noise level (inf where not identifiable).
        threshold: the gross-error threshold in units of √CRB.
    """
    z2 = crb_normalized((estimates - truth) ** 2, crb)     # NaN where the CRB is not finite
    ok = torch.isfinite(estimates).all(-1)
    gross = ok & (torch.nan_to_num(z2, nan=0.0) > threshold ** 2).any(-1)
    local = torch.zeros_like(gross)
    if gross.any():
        idx = gross.nonzero().squeeze(1)
        lower = torch.tensor([model.bounds[p][0] for p in model.parameters], dtype=torch.float64)
        upper = torch.tensor([model.bounds[p][1] for p in model.parameters], dtype=torch.float64)
        est = torch.minimum(torch.maximum(estimates[idx], lower), upper)
        c_est = projected_cost(model, est, signals[idx])
        c_true = projected_cost(model, truth[idx], signals[idx])
        # a relative margin keeps round-off at an exact tie on the "alternative" side
        local[idx] = c_est > c_true * (1 + 1e-9) + 1e-300
    return {"gross": gross, "local_minimum": local, "alternative": gross & ~local}


__all__ = ["GROSS_ERROR_THRESHOLD", "KINDS", "projected_cost", "classify_gross_errors"]
