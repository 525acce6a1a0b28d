"""Training losses (DESIGN §3). Learning only: no physics here.

Notation: N samples, P parameters, estimate ``θ̂`` [N, P], truth ``θ`` [N, P], ``CRB`` [N, P] the
Cramér–Rao bound of each sample at *its training noise level* (``crb_unit·σ²/|M0|²``).

* :func:`mse` — ``mean_{i,p} w_p·(θ̂_ip − θ_ip)²``; ``w`` optional per-parameter weights (the
  hand-tuned classic; the trainer uses ``w_p = 1/width_p²`` of the training range by default so
  that parameters with small units are not ignored).
* :func:`crb` — the seed paper's loss: ``mean_{i,p} (θ̂_ip − θ_ip)² / CRB_ip``. An efficient
  unbiased estimator scores 1, whatever the parameter or the noise level.
* :func:`bias_reduced` — after Mao, Flassbeck & Assländer (arXiv 2312.11468). Each noiseless
  sample is measured R times with independent noise (R "realizations"); with ``θ̄_ip`` the mean
  and ``v_ip`` the unbiased variance (divisor R−1) of its R estimates::

      L = mean_{i,p} (θ̄_ip − θ_ip)² / CRB_ip  +  λ · mean_{i,p} max(0, v_ip / CRB_ip − δ)

  The first term is the CRB-normalized squared bias (its expectation is bias²/CRB + v/(R·CRB):
  the sample mean of R estimates still carries 1/R of their variance). The second term only
  penalizes variance above δ times the bound (δ = 1: an unbiased estimator cannot go below the
  bound, so that part is not a defect). Both means run over the same entries, so the sum equals
  the mean of the summed terms. The paper fine-tunes a CRB-loss network with R = 200, λ = 1,
  δ = 1. Training-config defaults: R = 8, λ = 0.1, δ = 1. Measured on t2_decay at SNR 10
  (docs/training.md §8): λ = 0 and 0.1 gave the smallest bias (mean |bias|/√CRB 0.04 on a
  grid, vs 0.13 for the CRB loss), λ = 1 0.09, and λ = 10 pushed the variance below the bound
  at the price of a large bias (0.50).

Entries whose CRB is infinite (parameter not identifiable in that sample) are left out of the
means: no finite error is "bad" there.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

LOSSES = ("mse", "crb", "bias_reduced")


def _finite_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over entries where ``mask`` holds (0 if there are none)."""
    count = mask.sum().clamp_min(1)
    return torch.where(mask, values, torch.zeros_like(values)).sum() / count


def mse(estimate: torch.Tensor, target: torch.Tensor,
        weights: torch.Tensor | Sequence[float] | None = None) -> torch.Tensor:
    """``mean_{i,p} w_p (θ̂_ip − θ_ip)²`` (``w = 1`` when ``weights`` is None)."""
    sq = (estimate - target) ** 2
    if weights is not None:
        sq = sq * torch.as_tensor(weights, dtype=sq.dtype, device=sq.device)
    return sq.mean()


def crb(estimate: torch.Tensor, target: torch.Tensor, crb: torch.Tensor) -> torch.Tensor:
    """``mean_{i,p} (θ̂_ip − θ_ip)² / CRB_ip`` over entries with a finite CRB."""
    crb = crb.to(estimate.dtype)
    finite = torch.isfinite(crb) & (crb > 0)
    safe = torch.where(finite, crb, torch.ones_like(crb))
    return _finite_mean((estimate - target) ** 2 / safe, finite)


def bias_reduced(estimates: torch.Tensor, target: torch.Tensor, crb: torch.Tensor,
                 lam: float = 0.1, delta: float = 1.0) -> torch.Tensor:
    """Bias-reduced loss (module docstring).

    Args:
        estimates: [N, R, P] estimates of R noisy measurements of each of N noiseless samples.
        target: [N, P] true parameters (shared by the R realizations).
        crb: [N, P] CRB at the training noise level of each sample (shared likewise).
        lam: weight λ of the variance-excess term.
        delta: variance allowed before the penalty starts, in units of the CRB.
    """
    if estimates.ndim != 3 or estimates.shape[1] < 2:
        raise ValueError("bias_reduced needs estimates of shape [N, R, P] with R >= 2")
    crb = crb.to(estimates.dtype)
    finite = torch.isfinite(crb) & (crb > 0)
    safe = torch.where(finite, crb, torch.ones_like(crb))
    mean = estimates.mean(1)
    var = estimates.var(1, unbiased=True)
    bias_term = (mean - target) ** 2 / safe
    excess = torch.relu(var / safe - delta)
    return _finite_mean(bias_term + lam * excess, finite)


def crb_ratio_per_parameter(estimate: torch.Tensor, target: torch.Tensor,
                            crb: torch.Tensor) -> torch.Tensor:
    """[P] mean over samples of ``(θ̂ − θ)² / CRB`` (finite CRBs only): the validation metric,
    the same whatever loss trained the network."""
    crb = crb.to(torch.float64)
    finite = torch.isfinite(crb) & (crb > 0)
    safe = torch.where(finite, crb, torch.ones_like(crb))
    ratio = (estimate.to(torch.float64) - target.to(torch.float64)) ** 2 / safe
    ratio = torch.where(finite, ratio, torch.zeros_like(ratio))
    return ratio.sum(0) / finite.sum(0).clamp_min(1)


def mse_weights(parameters: Sequence[str], scales: Mapping[str, float],
                overrides: Mapping[str, float] | None = None) -> list[float]:
    """Per-parameter MSE weights: ``1/scale²`` unless ``overrides`` gives a weight."""
    overrides = overrides or {}
    return [float(overrides.get(p, 1.0 / float(scales[p]) ** 2)) for p in parameters]


__all__ = ["LOSSES", "mse", "crb", "bias_reduced", "crb_ratio_per_parameter", "mse_weights"]
