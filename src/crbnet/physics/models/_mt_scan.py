"""Prefix scans of 2×2 affine maps over one cycle of the hybrid-state MT model
(:mod:`crbnet.physics.models.mt_hybrid_state`): the two-level scan of the half-TR maps, the
logarithmic scan of the block totals, the periodic start that closes the cycle through the
inversion, and the march of a state through every block.

An affine map ``y -> L y + v`` of R² is a pair of stacked tensors ``L [2, 2, ...]``,
``v [2, ...]``; composing two is four broadcast products (batched matmul on tiny matrices is
slow). The prefix maps come from a two-level scan: sequentially over the ~√T positions within
blocks of consecutive steps, vectorized over the blocks, then a logarithmic scan over the block
totals: ~√T + log₂√T sequential steps instead of T.
"""

from __future__ import annotations

import math

import torch

# An affine map y -> L y + v of R², batched: L is [2, 2, ...] (row, column, batch...), v [2, ...].
Affine = tuple[torch.Tensor, torch.Tensor]



def _compose(outer: Affine, inner: Affine) -> Affine:
    """The affine map ``outer ∘ inner`` (apply ``inner`` first), as 4 products on stacked
    components rather than 12 on single ones (fewer, larger operations)."""
    (A, a), (B, b) = outer, inner
    L = A[:, 0, None] * B[None, 0] + A[:, 1, None] * B[None, 1]
    v = A[:, 0] * b[0] + A[:, 1] * b[1] + a
    return L, v


def _linear(L: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``L y`` for y = (y1, y2) stacked on dim 0."""
    return L[:, 0] * y[0] + L[:, 1] * y[1]


def _apply(m: Affine, y: torch.Tensor) -> torch.Tensor:
    """``L y + v``."""
    return _linear(m[0], y) + m[1]


def _block_size(n: int) -> int:
    """Steps per block of the two-level scan: the divisor of n closest to √n from below (1 when
    n is prime: then the logarithmic scan does all the work)."""
    return max(b for b in range(1, math.isqrt(n) + 1) if n % b == 0)


def _by_step(t: torch.Tensor):
    """Per-TR quantities ``t`` [..., T, N] by step of the two-level scan.

    Step n maps mid-TR n to mid-TR n+1: the second half of TR n, then the first half of TR n+1.
    With ``block`` dividing T the steps form ``nb = T / block`` blocks; this yields, for each
    position j in the block, ``(t of TR b·block + j, t of TR b·block + j + 1)`` for every block b
    (dims [..., nb, N]). For the last block's last step the second is TR 0 of the next cycle;
    the inversion between them is left to the caller (see :func:`_inversion_after_last`).
    """
    T, n = t.shape[-2:]
    block = _block_size(T)
    t = t.reshape(*t.shape[:-2], T // block, block, n)
    for j in range(block):
        if j < block - 1:
            following = t[..., j + 1, :]
        else:                                               # the next block's first TR
            following = torch.cat((t[..., 1:, 0, :], t[..., :1, 0, :]), -2)
        yield t[..., j, :], following


def _cycle_steps(half: Affine):
    """:func:`_by_step` of a half-TR map ``(E [2, 2, T, N], o [2, T, N])``: per position j,
    ``((E, o) of TR n, (E, o) of TR n+1)`` with batch dims [nb, N]."""
    for (E1, E2), (o1, o2) in zip(_by_step(half[0]), _by_step(half[1])):
        yield (E1, o1), (E2, o2)


def _inversion_after_last(flip: torch.Tensor, n_blocks: int) -> torch.Tensor:
    """Diagonal [2, nb, N] applied after the first half of the blocks' last steps: the
    inversion (``flip``, [2, N]) for the last block, which ends the cycle; 1 for the others."""
    return torch.cat((torch.ones_like(flip)[:, None].expand(2, n_blocks - 1, -1), flip[:, None]), 1)


def _scan_cycle(half: Affine, flip: torch.Tensor) -> tuple[Affine, Affine]:
    """Prefix compositions of the steps of one cycle within each block; ``half`` holds the
    half-TR maps ``(E_n, g_n)`` of ``y -> E y + g``.

    Returns the first rows (the r_f component) of the within-block prefixes — linear part
    [2, nb, block, N] and offset [nb, block, N] — and the block totals (batch dims [nb, N]).
    """
    prefix, rows_L, rows_v = None, [], []
    steps = list(_cycle_steps(half))
    for j, (first, second) in enumerate(steps):
        if j == len(steps) - 1:
            inversion = _inversion_after_last(flip, first[1].shape[1])
            first = (inversion[:, None] * first[0], inversion * first[1])
        step = _compose(second, first)
        prefix = step if prefix is None else _compose(step, prefix)
        rows_L.append(prefix[0][0])
        rows_v.append(prefix[1][0])
    return (torch.stack(rows_L, -2), torch.stack(rows_v, -2)), prefix


def _march(half: Affine, flip: torch.Tensor, start: torch.Tensor
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """The state along each block from ``start`` [2, nb, N], with ``half`` the half-TR maps in
    centred form ``(E_n, y∞_n)``: ``y -> E (y − y∞) + y∞``. Returns r_f after every step
    ([nb, block, N]) and the block-end states [2, nb, N]."""
    y, rows = start, []
    steps = list(_cycle_steps(half))
    for j, ((E1, c1), (E2, c2)) in enumerate(steps):
        y = _linear(E1, y - c1) + c1
        if j == len(steps) - 1:
            y = _inversion_after_last(flip, y.shape[1]) * y
        y = _linear(E2, y - c2) + c2
        rows.append(y[0])
    return torch.stack(rows, -2), y


def _periodic_start(to_block_end: Affine) -> torch.Tensor:
    """z0 = K z0 + k for the cycle map (K, k) = the last block end: (I − K) z0 = k. [2, N]"""
    K, k = to_block_end[0][..., -1, :], to_block_end[1][:, -1]
    m11, m12, m21, m22 = 1 - K[0, 0], -K[0, 1], -K[1, 0], 1 - K[1, 1]
    inv_dm = (m11 * m22 - m12 * m21).reciprocal()
    return torch.stack(((m22 * k[0] - m12 * k[1]) * inv_dm, (m11 * k[1] - m21 * k[0]) * inv_dm))


def _block_starts(to_block_end: Affine, z0: torch.Tensor) -> torch.Tensor:
    """State at the start of every block, [2, nb, N]."""
    u = _apply((to_block_end[0][..., :-1, :], to_block_end[1][:, :-1]), z0)
    return torch.cat((z0[:, None], u), 1)


def _scan_log(maps: Affine) -> Affine:
    """Inclusive prefix compositions along batch dim -2 in ⌈log₂ n⌉ vectorized steps
    (Hillis–Steele)."""
    L, v = maps
    n = L.shape[-2]
    shift = 1
    while shift < n:
        Lc, vc = _compose((L[..., shift:, :], v[..., shift:, :]),
                          (L[..., :-shift, :], v[..., :-shift, :]))
        L = torch.cat((L[..., :shift, :], Lc), -2)
        v = torch.cat((v[..., :shift, :], vc), -2)
        shift *= 2
    return L, v


def _solve_periodic(rows: Affine, block_totals: Affine) -> tuple[torch.Tensor, torch.Tensor]:
    """The r_f component of the periodic solution at every mid-TR, [T, N] (mid-TR 0 .. T-1),
    from the prefix maps of one cycle as :func:`_scan_cycle` returns them (for the state, or
    for a tangent: the recursion is the same). Also returns the block-start states [2, nb, N].
    """
    to_block_end = _scan_log(block_totals)                 # mid-TR 0 -> end of block b
    z0 = _periodic_start(to_block_end)
    u = _block_starts(to_block_end, z0)
    (L0, v0), u_ = rows, u[:, :, None]
    r_f = L0[0] * u_[0] + L0[1] * u_[1] + v0               # mid-TR 1, 2, ..., T-1, 0
    return torch.cat((z0[:1], r_f.reshape(-1, r_f.shape[-1])[:-1])), u
