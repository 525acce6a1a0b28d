"""Sub-grid refinement of a dictionary match: the maximum of a quadratic fitted to the matching
scores of the best atom's grid neighbours.

A dictionary's estimate is a grid node, so its error can never be smaller than about a quarter
of a grid step, and where two parameters are correlated the quantization of the better-known
one biases the other (fisp_mrf at CSF, T1 ≈ 4 s: T1 one node low pushes T2 about 6 % high on
the default 100 × 100 grid). Near its maximum the normalized score
``|⟨f(θ), y⟩|² / (‖f(θ)‖² ‖y‖²)`` is smooth in the grid coordinates (log units on log axes),
so a full quadratic (cross terms included: they carry the correlation) fitted by least squares
to the 3^P nodes around the best one locates the maximum between nodes. Within one window the
refined point stays within one cell of the window's centre: when the quadratic's maximum lies
farther, the point on the way to it where the box is left (the quadratic rises all along that
segment); when the quadratic has no maximum (not negative definite), the node itself. A point
left on the box's edge moves the window to its nearest node and the fit is repeated (at most
``max_moves`` times): along a correlation ridge the best node can be two or more cells away
from the maximum in the worse-determined parameter (fisp_mrf at T1 = 4 s, T2 = 2 s: the best
node's T2 is 2.24 s).
"""

from __future__ import annotations

import itertools
from typing import Callable

import torch


def neighbour_offsets(counts: list[int]) -> torch.Tensor:
    """Grid offsets [M, P] of the neighbourhood used for refinement: −1, 0, 1 along every axis
    with at least 3 nodes, 0 along the others (M = 3^(axes refined))."""
    steps = [(-1, 0, 1) if n >= 3 else (0,) for n in counts]
    return torch.tensor(list(itertools.product(*steps)), dtype=torch.int64)


def window_centres(best: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """Centre [N, P] of each voxel's 3^P window: the best node, moved one node inwards where it
    lies on the grid's edge (so the window stays on the grid)."""
    n = torch.tensor(counts, dtype=torch.int64, device=best.device)
    low = torch.where(n >= 3, torch.ones_like(n), torch.zeros_like(n))
    high = torch.where(n >= 3, n - 2, n - 1)
    return torch.maximum(torch.minimum(best, high), low)


def _design(offsets: torch.Tensor) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Least-squares design [M, 1 + R + R(R+1)/2] of a full quadratic in the R refined axes,
    and the (i, j) axis pairs of its second-order columns."""
    axes = [j for j in range(offsets.shape[1]) if bool((offsets[:, j] != 0).any())]
    u = offsets.to(torch.float64)
    pairs = [(i, j) for a, i in enumerate(axes) for j in axes[a:]]
    columns = [torch.ones(u.shape[0], dtype=torch.float64)] + [u[:, i] for i in axes]
    columns += [u[:, i] * u[:, j] for i, j in pairs]
    return torch.stack(columns, 1), pairs


def quadratic_peak(offsets: torch.Tensor, scores: torch.Tensor, start: torch.Tensor
                   ) -> torch.Tensor:
    """Fractional grid offsets [N, P] of the refined maximum, relative to the window centre.

    Args:
        offsets: [M, P] window offsets (:func:`neighbour_offsets`).
        scores: [N, M] normalized scores at the window's nodes (float64).
        start: [N, P] offset of the best node within the window (the fallback and the point
            from which the step to the quadratic's maximum is taken).
    """
    design, pairs = _design(offsets)
    axes = sorted({i for pair in pairs for i in pair})
    R, N = len(axes), scores.shape[0]
    if R == 0:
        return start.to(torch.float64)
    design = design.to(scores.device)
    coef = torch.linalg.pinv(design) @ scores.T.to(torch.float64)       # [C, N]
    gradient = coef[1:1 + R].T                                           # [N, R]
    hessian = torch.zeros(N, R, R, dtype=torch.float64, device=scores.device)
    where = {axis: k for k, axis in enumerate(axes)}
    for c, (i, j) in enumerate(pairs):
        value = coef[1 + R + c]
        if i == j:
            hessian[:, where[i], where[i]] = 2 * value
        else:
            hessian[:, where[i], where[j]] = value
            hessian[:, where[j], where[i]] = value
    concave = (torch.linalg.eigvalsh(hessian) < 0).all(1)
    safe = torch.where(concave[:, None, None], hessian,
                       -torch.eye(R, dtype=torch.float64, device=scores.device))
    peak = -torch.linalg.solve(safe, gradient[..., None])[..., 0]        # [N, R]
    origin = start[:, axes].to(torch.float64)
    step = peak - origin
    # Leave the box [-1, 1]^R where the segment origin → peak does (origin is inside it).
    limit = torch.where(step > 0, (1 - origin) / step.clamp_min(1e-300),
                        torch.where(step < 0, (-1 - origin) / step.clamp_max(-1e-300),
                                    torch.full_like(step, float("inf"))))
    fraction = limit.min(1).values.clamp(max=1.0)
    refined = origin + fraction[:, None] * step
    refined = torch.where(concave[:, None] & torch.isfinite(refined).all(1, keepdim=True),
                          refined, origin)
    out = start.to(torch.float64).clone()
    out[:, axes] = refined
    return out


def refine(best: torch.Tensor, counts: list[int],
           scores_at: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
           max_moves: int = 4) -> torch.Tensor:
    """Fractional grid coordinates [N, P] (float64) of the refined maxima.

    Args:
        best: [N, P] grid coordinates of each voxel's best node.
        counts: nodes per axis.
        scores_at: ``scores_at(rows, nodes)`` → [n, M] normalized scores of voxels ``rows``
            [n] at grid coordinates ``nodes`` [n, M, P].
        max_moves: how often a window may follow a maximum that lies beyond its edge.
    """
    offsets = neighbour_offsets(counts).to(best.device)
    high = torch.tensor(counts, dtype=torch.int64, device=best.device) - 1
    position = best.to(torch.float64).clone()
    rows = torch.arange(best.shape[0], device=best.device)
    node, centre = best, window_centres(best, counts)
    for _ in range(1 + max_moves):
        scores = scores_at(rows, centre[:, None, :] + offsets[None])
        offset = quadratic_peak(offsets, scores, node - centre)
        position[rows] = centre + offset
        nearest = torch.minimum((centre + offset).round().to(torch.int64).clamp_min(0), high)
        moved_centre = window_centres(nearest, counts)
        follow = (offset.abs() > 1 - 1e-9).any(1) & (moved_centre != centre).any(1)
        if not bool(follow.any()):
            break
        rows, node, centre = rows[follow], nearest[follow], moved_centre[follow]
    return position
