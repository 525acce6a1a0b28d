"""Metrics in CRB units: errors divided by the Cramér–Rao bound of their parameter and point.

One statistic serves training losses (:mod:`crbnet.learning.losses`), validation, evaluation,
comparison and the gross-error tests (:mod:`crbnet.assessment`): :func:`crb_normalized`.
Entries whose CRB is not finite and positive (parameter not identifiable at that point) are NaN
there and left out of every mean.
"""

from __future__ import annotations

import torch


def finite_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over entries where ``mask`` holds (0 if there are none)."""
    count = mask.sum().clamp_min(1)
    return torch.where(mask, values, torch.zeros_like(values)).sum() / count


def finite_crb(crb: torch.Tensor) -> torch.Tensor:
    """Entries where the CRB is usable as a scale: finite and positive (an infinite CRB means
    the parameter is not identifiable in that sample)."""
    return torch.isfinite(crb) & (crb > 0)


def crb_normalized(values: torch.Tensor, crb: torch.Tensor) -> torch.Tensor:
    """``values / CRB`` entry by entry, NaN where the CRB is not finite and positive.

    The one place where anything is put in CRB units — losses, validation, evaluation,
    comparison and gross-error tests all go through it. Gradients flow only through the
    entries with a usable CRB (the others never divide by the bad CRB).
    """
    crb = crb.to(device=values.device, dtype=values.dtype)
    usable = finite_crb(crb)
    ratio = values / torch.where(usable, crb, torch.ones_like(crb))
    return torch.where(usable, ratio, torch.full_like(ratio, float("nan")))


def crb_ratio_per_parameter(estimate: torch.Tensor, target: torch.Tensor,
                            crb: torch.Tensor) -> torch.Tensor:
    """[P] mean over samples of ``(θ̂ − θ)² / CRB`` (finite CRBs only): the validation metric of
    training, the same whatever loss trained the network."""
    crb = crb.to(torch.float64)
    finite = finite_crb(crb)
    ratio = crb_normalized((estimate.to(torch.float64) - target.to(torch.float64)) ** 2, crb)
    ratio = torch.where(finite, ratio, torch.zeros_like(ratio))
    return ratio.sum(0) / finite.sum(0).clamp_min(1)


__all__ = ["finite_crb", "crb_normalized", "finite_mean", "crb_ratio_per_parameter"]
