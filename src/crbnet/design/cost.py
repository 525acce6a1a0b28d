"""The design cost: mean over tissue points of Σ_p w_p · CRB_p / θ_p², differentiable in the
sequence.

Each term is a relative variance — the squared relative precision at which an efficient
unbiased estimator finds parameter p — so parameters of different units and magnitudes count
alike unless weighted. The bounds are the ones :func:`crbnet.crb` computes (complex M0 as a
nuisance parameter; see docs/statistics.md). The signal is the model's
``signal_for_sequence`` (the design contract, docs/design.md); its Jacobian in the tissue
parameters comes from a derivative that is itself differentiable in the sequence (forward-mode
autodiff, or the complex step for models that declare themselves analytic in their parameters),
so reverse-mode autodiff through the Jacobian, the Fisher matrix and its inverse gives the exact
gradient of the cost in the sequence.
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch.func import jvp, vmap

from crbnet.physics.models.base import SignalModel
from crbnet.stats.crb import _fisher_from_columns

Signal = Callable[[torch.Tensor], torch.Tensor]

# Relative size of the complex step: its truncation error, O(h²), is far below round-off.
_COMPLEX_STEP = 1e-20


def forward_mode_jacobian(simulate: Signal, points: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Signal [N, T] and ∂f/∂θ columns [P, N, T] at ``points`` [N, P] by ``torch.func.jvp``
    batched over the P directions (one direction covers every point at once: points are
    independent)."""
    n_points, n_par = points.shape
    directions = torch.eye(n_par, dtype=points.dtype)[:, None, :].expand(n_par, n_points, n_par)

    def column(direction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return jvp(simulate, (points,), (direction,))

    return vmap(column, out_dims=(None, 0))(directions)


def complex_step_jacobian(simulate: Signal, points: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Signal [N, T] and ∂f/∂θ columns [P, N, T] of a real signal function analytic in θ:
    ``∂f/∂θ_p = Im f(θ + i·h·e_p) / h``, the value and the P steps in one batch of (P+1)·N
    points. Plain tensor operations, so any autodiff differentiates the result further."""
    n_points, n_par = points.shape
    steps = _COMPLEX_STEP * points.abs().clamp_min(1e-12)             # [N, P]
    batch = points.to(torch.complex128)[None].repeat(n_par + 1, 1, 1)
    for p in range(n_par):
        batch[p + 1, :, p] = batch[p + 1, :, p] + 1j * steps[:, p]
    out = simulate(batch.reshape(-1, n_par)).reshape(n_par + 1, n_points, -1)
    return out[0].real, out[1:].imag / steps.T[:, :, None]


def played_signal_and_jacobian(model: SignalModel, played: Mapping[str, torch.Tensor],
                               points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's signal [N, T] and Jacobian columns [P, N, T] at ``points`` [N, P] when it
    plays ``played`` (:meth:`SignalModel.signal_for_sequence`), differentiable in ``played``.

    Where the model declares ``real_signal_phase`` c, the real signal ``Re(conj(c)·f)`` is used
    (same Fisher matrix); with ``analytic_in_theta`` its Jacobian comes by the complex step,
    else by forward mode."""
    phase = model.real_signal_phase

    def simulate(theta: torch.Tensor) -> torch.Tensor:
        signal = model.signal_for_sequence(theta, played)
        if phase is None:
            return signal
        return (signal if phase == 1 else signal * complex(phase).conjugate()).real

    def analytic(theta: torch.Tensor) -> torch.Tensor:
        # Under the complex step, the imaginary part carries the derivative: keep it.
        return model.signal_for_sequence(theta, played) * complex(phase).conjugate()

    if phase is not None and model.analytic_in_theta:
        return complex_step_jacobian(analytic, points)
    return forward_mode_jacobian(simulate, points)


def relative_crb(signal: torch.Tensor, columns: torch.Tensor, points: torch.Tensor,
                 sigma: float) -> torch.Tensor:
    """CRB_p / θ_p² [N, P] from the signal [N, T] and Jacobian columns [P, N, T] at ``points``
    [N, P] (SI), for noise ``sigma`` and |M0| = 1; not finite where the Fisher matrix is
    singular."""
    fisher = _fisher_from_columns(columns, signal)
    # inv_ex: an exactly singular Fisher matrix gives a non-finite cost, not an exception (the
    # optimizer steps back from it; the designer refuses a start that has it).
    variance = torch.diagonal(torch.linalg.inv_ex(fisher)[0], dim1=-2, dim2=-1)
    variance = variance[:, :points.shape[1]]
    return variance * sigma ** 2 / points ** 2


def design_cost(relative_variance: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean over points of Σ_p w_p · CRB_p / θ_p² (a scalar tensor); ``weights`` [P]."""
    return (relative_variance * weights).sum(-1).mean()
