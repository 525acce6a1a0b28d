"""Two-pool magnetization transfer in the hybrid state of free precession (docs/physics.md §1).

Free pool (fraction 1 − m0s) is tracked by its radius ``r_f`` along the instantaneous
steady-state direction, the semi-solid pool by its longitudinal ``z_s``. The sequence control θ
is the polar angle of the spin-locked free-pool magnetization — half the flip angle α of the
alternating pulses (θ = α/2; the RF amplitude is ω1 = 2θ/TRF), not the flip angle itself.
Within one TR θ and the pulse duration TRF are constant, so ``y = (r_f, z_s)`` obeys an affine 2×2 ODE
``dy/dt = A y + b``:

    A = [[-(c²/T1f + s²/T2f + c²·Rx·m0s),  Rx·(1−m0s)·c            ],
         [ Rx·m0s·c,                       -(1/T1s + Rx·(1−m0s) + W)]]
    b = [(1−m0s)·c/T1f,  m0s/T1s],   c = cos(B1·θ), s = sin(B1·θ)
    W = k_RF · (B1·θ)² · T2s / (TRF · TR)

Its flow over a time h is ``y(h) = E (y(0) − y∞) + y∞`` with ``E = exp(A h)`` and
``y∞ = −A⁻¹ b``. Write ``A h = μ I + M`` with ``μ = tr(A) h / 2`` and M traceless; then
``M² = x I`` with ``x = ((A11 − A22) h / 2)² + A12·A21·h²``. The off-diagonal product
``Rx²·m0s·(1−m0s)·c²`` is ≥ 0, so x ≥ 0, A has real eigenvalues and, with r = √x,

    E = e^μ (cosh(r) I + sinh(r)/r · M)

— a closed form instead of a generic matrix exponential. ``det A > 0`` always (both pools
relax), so ``y∞`` exists.

Time convention: θ_n, TRF_n hold on [n·TR, (n+1)·TR); sample n is
``M0 · r_f((n + ½)·TR) · sin(B1·θ_n)`` (echo at TR/2). A cycle is the whole train; at its start
an inversion pulse of duration T_inv maps ``r_f → −r_f`` and
``z_s → z_s · (1 − π²·T2s/T_inv)``.

Periodic steady state, solved exactly: the state at mid-TR n is affine in the state ``z₀`` at
mid-TR 0, ``y_n = L_n z₀ + v_n``; the prefix maps ``(L_n, v_n)`` come from a scan over the
train, the cycle closes through the inversion, and ``z₀`` solves a 2×2 linear system. No cycles
are iterated.

Implementation notes (speed only; the physics is all above):

- Arrays are time-major, ``[T, N]``, so one TR is a contiguous slice. Per-voxel coefficients
  are ``[1, N]`` rows and sequence quantities ``[T, 1]`` columns (θ and θ²/TRF cached per
  device and dtype), so every entry of ``A h`` is a sum of outer products. Large batches are
  simulated in chunks of ``chunk_size`` voxels so that temporaries stay cache-sized.
- 2×2 maps are stacked tensors ``L [2, 2, ...]``, ``v [2, ...]``; composing them is four
  broadcast products (batched matmul on tiny matrices is slow).
- The prefix maps come from a two-level scan: sequentially over the ~√T positions within
  blocks of consecutive steps, vectorized over the blocks, then a logarithmic scan over the
  block totals: ~√T + log₂√T sequential steps instead of T.
- Values and derivatives take different routes. The steady state is an
  ``autograd.Function`` of the voxel rows, B1 and the inversion factor: its forward pass runs
  on plain tensors (no derivative bookkeeping), and its forward-mode rule (``jvp``, used by the
  CRB's ``torch.func.jvp`` + ``vmap`` Jacobian, by dual tensors and by NLLS) is implicit
  differentiation of the periodic orbit. A tangent ż of the state obeys the same affine
  recursion as the state, with the same matrices E and a forcing ``Ė (y − y∞) + (I − E) ẏ∞``
  per half TR. The forcing is linear in the entry tangents, ``Σ_q G_q q̇``, with coefficients
  G_q from closed forms (derivatives of ``E = e^μ (cosh r I + sinh(r)/r M)`` in μ and x = r²,
  and ``ẏ∞ = −A⁻¹ (Ȧ y∞ + ḃ)``) that carry no tangent themselves; it is made step by step
  while the state and the tangent offsets are marched through every block, and the periodic
  tangent then follows from the value pass's prefix maps — no cycles iterated, exact to
  round-off (checked against reverse mode and finite differences in the tests). Reverse mode
  differentiates the value computation itself, marched through each block from the exact
  block-start values (the periodic solve on detached maps plus a first-order correction);
  second derivatives through the steady state are not provided (nothing in crbnet takes them).
- On CPU, where no autodiff is tracking the input, ``simulate``, the Jacobian and the CRB take
  a compiled route instead (kernel in :mod:`._mt_kernel`; see
  :meth:`MTHybridState.explicit_signal_and_jacobian`): the same value pass and forward-mode
  rule, one voxel at a time with the state and its tangents in registers, along the eight
  voxel rows, beta and B1, chained to the parameters by
  :meth:`MTHybridState._voxel_row_derivatives`. The tensor version streams ``[T, N]`` tangents
  through memory and is bound by that; for the CRB the kernel is ~12× faster. Both are tested
  against each other. ``use_compiled_kernel = False`` forces the tensor code.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from crbnet.physics import sequences as seqs
from crbnet.physics.models import _mt_kernel, _mt_segments, _numba
from crbnet.physics.models.base import ModelOption, ParameterSpec, SignalModel

# Below this x = r², sinh(r)/r comes from its Taylor series 1 + x/6 + x²/120 (truncation error
# < 1e-21): the quotient is exact in value, but its forward-mode derivative cancels as r → 0
# (relative error ~ 3·eps/x, so ≤ 1e-9 at the switch, on a term that is multiplied by |M| ≤ √x).
_TAYLOR_X = 1e-6
# Below this x, ∂(sinh(r)/r)/∂x comes from its series (the closed form cancels: relative error
# ~ 3·eps/x, so ≤ 1e-13 here).
_D_TAYLOR_X = 1e-2
# cosh(r) and sinh(r) are evaluated at min(r, _R_CLAMP) and the excess goes into the exponential
# prefactor: exact to e^{-2·_R_CLAMP} and it never overflows (e^μ cosh r ≤ 1 since μ + r ≤ 0).
_R_CLAMP = 20.0

# An affine map y -> L y + v of R², batched: L is [2, 2, ...] (row, column, batch...), v [2, ...].
Affine = tuple[torch.Tensor, torch.Tensor]


def _exp_traceless(mu: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(C, S)``: ``C = e^μ cosh r`` and ``S = e^μ sinh(r)/r`` with ``r = √x``, x ≥ 0 — the
    scalars of ``exp(μ I + M) = C I + S M``.

    Both are analytic in x; ``x + tiny`` keeps √ finite at x = 0 so that the derivative of
    cosh(√x) (a product, no cancellation) stays exact there. ``∂C/∂x = S/2``; ``∂S/∂x`` is
    :func:`_d_sinh_part`.
    """
    r = torch.sqrt(x + torch.finfo(x.dtype).tiny)
    r_c = r.clamp(max=_R_CLAMP)
    scale = torch.exp(mu + (r - r_c))
    # The series is evaluated everywhere (x stays far from overflow) and used only where small.
    sinhc_taylor = 1 + x * (1 / 6 + x * (1 / 120))
    sinhc = torch.where(x < _TAYLOR_X, sinhc_taylor, torch.sinh(r_c) / r)
    return scale * torch.cosh(r_c), scale * sinhc


def _d_sinh_part(mu: torch.Tensor, x: torch.Tensor, C: torch.Tensor, S: torch.Tensor
                 ) -> torch.Tensor:
    """``∂S/∂x = e^μ (cosh r − sinh(r)/r) / (2x)`` for the C, S of :func:`_exp_traceless`.

    The closed form cancels for small x, where the series of ``d/dx sinh(√x)/√x``
    (truncation < 1e-15 relative below _D_TAYLOR_X; there r ≪ _R_CLAMP, so the scale is e^μ)
    is used instead."""
    series = torch.exp(mu) * (1 / 6 + x * (1 / 60 + x * (1 / 1680 + x * (1 / 90720
                                                                          + x / 7983360))))
    return torch.where(x < _D_TAYLOR_X, series, (C - S) / (2 * x))


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


def _flow(a11: torch.Tensor, a22: torch.Tensor, a12: torch.Tensor, a21: torch.Tensor,
          b1: torch.Tensor, b2: torch.Tensor) -> dict[str, torch.Tensor]:
    """The flow of ``dy/dt = A y + b`` over half a TR from the entries of ``A h`` and ``b h``:
    ``E = exp(A h)`` [2, 2, T, N], ``y∞ = −A⁻¹ b`` [2, T, N], the scalars C, S of E and
    ``d = (a11 − a22)/2``, ``1/det(A h)``."""
    # E = C I + S M with M = A h − μ I = [[d, a12], [a21, −d]] and x = r² = d² + a12·a21.
    mu, d = 0.5 * (a11 + a22), 0.5 * (a11 - a22)
    off = a12 * a21                                        # ≥ 0
    C, S = _exp_traceless(mu, d * d + off)
    E = torch.stack((C + S * d, S * a12, S * a21, C - S * d)).reshape(2, 2, *C.shape)
    # y∞ = −A⁻¹ b = (a12 b2 − a22 b1, a21 b1 − a11 b2) / det A (h cancels).
    inv_det = (a11 * a22 - off).reciprocal()
    y_inf = torch.stack(((a12 * b2 - a22 * b1) * inv_det, (a21 * b1 - a11 * b2) * inv_det))
    return {"E": E, "y_inf": y_inf, "C": C, "S": S, "d": d, "inv_det": inv_det}


def _differentiable_r_f(E: torch.Tensor, y_inf: torch.Tensor, flip: torch.Tensor
                        ) -> torch.Tensor:
    """r_f at every mid-TR [T, N], differentiable in reverse mode through E, y∞ and flip.

    The periodic solve runs on detached maps; the state is then marched through each block
    with the differentiable maps from the exact block-start values u0. The true trajectory
    differs from that march ŷ only through its start u (equal to u0 in value):
    y = ŷ + L0 (u − u0), L0 the detached within-block prefix; and u follows from the block maps
    u ↦ ê + L0 (u − u0) by the same periodic solve. Exact to first order.
    """
    E0, y_inf0 = E.detach(), y_inf.detach()
    g0 = y_inf0 - _linear(E0, y_inf0)                      # y -> E y + g, g = (I − E) y∞
    (rows_L, _), block_totals = _scan_cycle((E0, g0), flip.detach())
    to_block_end = _scan_log(block_totals)
    z0 = _periodic_start(to_block_end)
    u0 = _block_starts(to_block_end, z0)
    march_rows, block_end = _march((E, y_inf), flip, u0)
    local = (block_totals[0], block_end - _linear(block_totals[0], u0))
    to_block_end = _scan_log(local)
    z0 = _periodic_start(to_block_end)
    delta = (_block_starts(to_block_end, z0) - u0)[:, :, None]   # value 0
    r_f = march_rows + rows_L[0] * delta[0] + rows_L[1] * delta[1]
    return torch.cat((z0[:1], r_f.reshape(-1, r_f.shape[-1])[:-1]))


def _entries(rows, B1, theta, w0):
    """Per-TR entries of ``A h`` — (a11, a22, a12, a21) [T, N] — and ``b h`` — b1 [T, N], b2
    [1, N] — from the voxel rows and the sequence columns θ, w0 = θ²/TRF ([T, 1]); also
    (cos α, sin α, cos² α, sin² α, w) for α = B1·θ, w = B1²·w0 ([T, 1] when B1 is one number
    [1, 1], else [T, N])."""
    k_c2, k_s2, k_w, k_0, x_f, x_s, k_b, b2 = rows
    alpha = theta * B1
    c, s = torch.cos(alpha), torch.sin(alpha)
    c2, s2, w = c * c, s * s, w0 * (B1 * B1)
    return (c2 * k_c2 + s2 * k_s2, w * k_w - k_0, c * x_f, c * x_s, c * k_b, b2), (c, s, c2, s2, w)


def _value_pass(rows, beta, B1, theta, w0):
    """The periodic steady state's value pass in plain tensor operations: r_f [T, N] at every
    mid-TR, the block-start states u, the within-block prefix rows and block totals, the
    entries of ``A h`` and ``b h`` and the half-TR flow (arguments as in
    :class:`_FreePoolSteadyState`)."""
    entries, _ = _entries(rows, B1, theta, w0)
    flow = _flow(*entries)
    E, y_inf = flow["E"], flow["y_inf"]
    flip = torch.stack((-torch.ones_like(beta), beta))      # the inversion, a diagonal matrix
    g = y_inf - _linear(E, y_inf)                           # y -> E y + g, g = (I − E) y∞
    prefix_rows, block_totals = _scan_cycle((E, g), flip)
    r_f, u = _solve_periodic(prefix_rows, block_totals)
    return r_f, u, prefix_rows, block_totals, entries, flow


def steady_state_signal(rows, beta: torch.Tensor, B1: torch.Tensor, theta: torch.Tensor,
                        w0: torch.Tensor) -> torch.Tensor:
    """The real signal [N, T] (M0 = 1) of the periodic steady state, by plain tensor operations
    only: every autodiff mode differentiates it in the voxel rows, beta, B1 and — unlike
    :meth:`MTHybridState.simulate` — in the sequence columns θ and w0 = θ²/TRF ([T, 1]).
    Sequence design uses it; ``rows, beta`` come from :meth:`MTHybridState._voxel_rows`."""
    r_f = _value_pass(rows, beta, B1, theta, w0)[0]
    return (r_f * torch.sin(theta * B1)).T


class _FreePoolSteadyState(torch.autograd.Function):
    """r_f [T, N] at every mid-TR of the periodic steady state (docs/physics.md §1; see the module
    docstring), from per-voxel rows [1, N] — ``A h`` and ``b h`` are sums of their products
    with sequence columns, see :meth:`MTHybridState._voxel_rows` — the inversion's z_s factor
    beta [N], B1 ([1, N], or [1, 1] when fixed), the sequence columns θ, θ²/TRF [T, 1], and
    whether B1 is estimated (if not, its tangent is zero and skipped)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(*args):
        rows, (beta, B1, theta, w0) = args[:8], args[8:12]
        r_f, u, prefix_rows, block_totals, entries, flow = _value_pass(rows, beta, B1, theta, w0)
        # Everything after r_f is kept for the derivative rules only.
        return (r_f, u, prefix_rows[0], block_totals[0], *entries[:4],
                *(flow[k] for k in _FreePoolSteadyState.kept))

    kept = ("E", "y_inf", "C", "S", "d", "inv_det")

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.mark_non_differentiable(*output[1:])
        ctx.save_for_forward(*inputs[:12], *output[1:])
        ctx.save_for_backward(*inputs[:12])
        ctx.b1_free = inputs[12]

    @staticmethod
    def jvp(ctx, *tangents):
        saved = ctx.saved_tensors
        rows, (beta, B1, theta, w0) = saved[:8], saved[8:12]
        u, prefix_L, totals_L, a11, a22, a12, a21, E, y_inf, C, S, d, inv_det = saved[12:]
        d_rows = [torch.zeros_like(x) if t is None else t for x, t in zip(rows, tangents)]
        dk_c2, dk_s2, dk_w, dk_0, dx_f, dx_s, dk_b, db2 = d_rows
        dbeta = torch.zeros_like(beta) if tangents[8] is None else tangents[8]
        dB1 = tangents[9] if ctx.b1_free else None
        _, (c, s, c2, s2, w) = _entries(rows, B1, theta, w0)
        D = _d_sinh_part(0.5 * (a11 + a22), d * d + a12 * a21, C, S)
        # −A⁻¹ e1 and −A⁻¹ e2 through (I − E): how y∞ moves the half-TR map.
        n1 = -inv_det * torch.stack((a22, -a21))
        n2 = -inv_det * torch.stack((-a12, a11))
        n1, n2 = n1 - _linear(E, n1), n2 - _linear(E, n2)
        per_tr = [E, y_inf, S, D, d, a12, a21, n1, n2, c, c2, s2, w]
        if dB1 is not None:
            # ∂/∂B1 of (a11, a22, c): B1 moves every entry through α = B1·θ and w = B1²·w0.
            k_c2, k_s2, k_w, _, x_f, x_s, k_b, _ = rows
            dc = -s * theta
            per_tr += [2 * c * s * theta * (k_s2 - k_c2), 2 * B1 * w0 * k_w, dc * x_f,
                       dc * x_s, dc * k_b]

        def entry_tangents(tr):
            """(ȧ11, ȧ22, ȧ12, ȧ21, ḃ1, ḃ2) of one TR (slices [nb, N])."""
            c, c2, s2, w = tr[9:13]
            da = [c2 * dk_c2 + s2 * dk_s2, w * dk_w - dk_0, c * dx_f, c * dx_s, c * dk_b]
            if dB1 is not None:
                da = [x + f * dB1 for x, f in zip(da, tr[13:])]
            return da + [db2]

        def half_tr(tr, da, y, z):
            """One half TR for the state y and its tangent z: the state moves by
            ``E (y − y∞) + y∞``, the tangent by ``E z + Ė (y − y∞) + (I − E) ẏ∞``, where
            Ė = μ̇ E + ẋ (S/2 I + D M) + S Ṁ (E = C I + S M, ∂C/∂x = S/2, ∂S/∂x = D) and
            ẏ∞ = −A⁻¹ (Ȧ y∞ + ḃ). The forcing is Σ_q G_q q̇ over the six entries q; the
            coefficients G_q carry no tangent, so they cost no derivative bookkeeping."""
            E, y_inf, S, D, d, a12, a21, n1, n2 = tr[:9]
            v = y - y_inf
            Ev, Sv = _linear(E, v), S * v
            Q = 0.5 * Sv + D * torch.stack((d * v[0] + a12 * v[1], a21 * v[0] - d * v[1]))
            zero = torch.zeros_like(Sv[0])
            h = 0.5 * (Ev + torch.stack((Sv[0], -Sv[1])))
            dQ = d * Q
            G = (h + dQ + y_inf[0] * n1,                                  # a11
                 Ev - h - dQ + y_inf[1] * n2,                             # a22
                 a21 * Q + torch.stack((Sv[1], zero)) + y_inf[1] * n1,    # a12
                 a12 * Q + torch.stack((zero, Sv[0])) + y_inf[0] * n2,    # a21
                 n1, n2)                                                  # b1, b2
            g = G[0] * da[0]
            for G_q, da_q in zip(G[1:], da[1:]):
                g = g + G_q * da_q
            return Ev + y_inf, g if z is None else _linear(E, z) + g

        # The tangent obeys the state's recursion with that forcing: march state and tangent
        # offsets (from 0) through every block from the exact block-start states — the forcing
        # made step by step stays cache-sized — then close the cycle with the value pass's
        # linear maps.
        y, z, rows_out, da = u, None, [], None
        steps = list(zip(*(_by_step(t.expand(*t.shape[:-1], E.shape[-1])) for t in per_tr)))
        n_blocks = E.shape[-2] // len(steps)
        for j, pairs in enumerate(steps):
            tr, tr_next = [c for c, _ in pairs], [n for _, n in pairs]
            da = entry_tangents(tr) if da is None else da
            y, z = half_tr(tr, da, y, z)                        # mid-TR -> TR end
            if j == len(steps) - 1:
                # The inversion; it also moves with beta: ż_s += β̇ · z_s.
                inversion = _inversion_after_last(torch.stack((-torch.ones_like(beta), beta)),
                                                  n_blocks)
                d_flip = torch.cat((torch.zeros_like(dbeta)[None].expand(n_blocks - 1, -1),
                                    (dbeta * y[1, -1])[None]))
                z = inversion * z + torch.stack((torch.zeros_like(d_flip), d_flip))
                y = inversion * y
            da = entry_tangents(tr_next)
            y, z = half_tr(tr_next, da, y, z)                   # TR start -> mid-TR
            rows_out.append(z[0])
        dr_f, _ = _solve_periodic((prefix_L, torch.stack(rows_out, -2)), (totals_L, z))
        return (dr_f,) + (None,) * 13

    @staticmethod
    def backward(ctx, grad_r_f, *_):
        primal = ctx.saved_tensors
        inputs = [t.detach().requires_grad_() for t in primal]
        with torch.enable_grad():
            rows, (beta, B1, theta, w0) = inputs[:8], inputs[8:]
            flow = _flow(*_entries(rows, B1, theta, w0)[0])
            flip = torch.stack((-torch.ones_like(beta), beta))
            r_f = _differentiable_r_f(flow["E"], flow["y_inf"], flip)
        grads = torch.autograd.grad(r_f, inputs, grad_r_f, allow_unused=True)
        return tuple(g if g is None or g.shape == x.shape else g.sum_to_size(x.shape)
                     for g, x in zip(grads, primal)) + (None,)


class MTHybridState(SignalModel):
    """Two-pool MT in the hybrid state; the sequence's θ is half the flip angle (the polar angle
    of the spin-locked free-pool magnetization).

    It plays 'mt' sequences (θ, TRF per TR; one cycle) and 'segmented' ones (α, TRF per pulse,
    several segments). Each segment is simulated as its own hybrid-state cycle and the signals
    are concatenated in segment order; a segment maps to an 'mt' cycle by θ = α/2 per pulse,
    its first pulse — which must be its only inversion, an ideal π pulse — becomes the cycle's
    inversion with T_inv = that pulse's TRF, and the inversion's own TR takes the following
    pulse's θ and TRF: the model's inversion is instantaneous and flips the spin-locked free
    pool along its own axis, so the spin lock continues through that TR. k_RF is the default
    (docs/physics.md, "Segmented sequences"). The RF phase must alternate (increment π). The
    option ``TR`` supplies the repetition time of a segmented sequence that gives none.
    """

    name = "mt_hybrid_state"
    sequence_kind = "mt"
    sequence_kinds = ("mt", "segmented")
    options = (ModelOption("TR", float, 0.0,
                           "repetition time (s) of a segmented sequence whose file gives none "
                           "(e.g. 3.5e-3); 0: the sequence's own"),)
    # Training ranges deliberately leave out the phantom's CSF (m0s = 0, T1f ≈ 4 s, T2f ≈ 2 s):
    # with no semi-solid pool the signal does not depend on Rx, T1s or T2s, the Fisher matrix
    # is singular and their CRB infinite, so neither a CRB-normalized loss nor a CRB-based
    # evaluation is defined there. CSF voxels come out flagged (at the range edge) by apply.
    specs = (
        ParameterSpec("m0s", "", (0.0, 0.7), (0.02, 0.3), 0.15, False,
                      "semi-solid (macromolecular) pool fraction"),
        ParameterSpec("T1f", "s", (0.05, 10.0), (0.5, 3.0), 1.2, True,
                      "longitudinal relaxation time of the free pool"),
        ParameterSpec("T2f", "s", (0.005, 3.0), (0.02, 0.2), 0.07, True,
                      "transverse relaxation time of the free pool"),
        ParameterSpec("Rx", "1/s", (0.0, 300.0), (5.0, 60.0), 30.0, False,
                      "exchange rate between the pools"),
        ParameterSpec("T1s", "s", (0.05, 10.0), (0.3, 3.0), 1.0, True,
                      "longitudinal relaxation time of the semi-solid pool"),
        ParameterSpec("T2s", "s", (1e-6, 1e-3), (5e-6, 20e-6), 12e-6, False,
                      "transverse relaxation time of the semi-solid pool"),
        ParameterSpec("B1", "", (0.3, 2.0), (0.7, 1.3), 1.0, False,
                      "relative transmit scale (multiplies θ and the flip angle 2θ)", map_name="TB1map"),
    )
    default_fixed = {"B1": 1.0}
    # Found by measurement (docs/training.md lists what was tried).
    training_defaults = {"data": {"batch_size": 256, "batches_per_epoch": 200, "pool_size": 8192,
                                  "pool_refresh": 512, "val_size": 1024},
                         "net": {"width": 256, "depth": 4},
                         "optim": {"epochs": 40, "lr": 1e-3}}
    # Voxels per pass of :meth:`_simulate` and per chunk in crbnet.crb: the [T, N] temporaries
    # (×(P+1) under forward-mode autodiff) must stay cache-sized; larger chunks are several times
    # slower on CPU. Results do not depend on either.
    chunk_size = 512
    crb_chunk_size = 512
    # The compiled CPU kernel for simulate, the Jacobian and the CRB where no autodiff is
    # tracking the input (see _compiled_applies); False: always the tensor code.
    use_compiled_kernel = True

    def __init__(self, sequence: seqs.MTSequence | seqs.SegmentedSequence | None = None,
                 fixed=None, TR: float = 0.0) -> None:
        super().__init__(sequence, fixed)
        # The sequence carries the TR in use: a recorded model rebuilds from it alone.
        self.sequence = seqs.resolve_tr(self.sequence, TR)
        self.TR = float(TR)
        self._cache: dict[tuple, tuple] = {}
        #: One model per segment of a segmented sequence (each an 'mt' cycle), else None.
        self._segments: list[MTHybridState] | None = None
        if self.sequence.kind == "segmented":
            self._segments = [MTHybridState(part, fixed=self.fixed) for part in
                              _mt_segments.segment_sequences(self.sequence, self.name)]

    def _segment_models(self) -> list["MTHybridState"]:
        """The per-segment models, with this model's numerical settings."""
        for part in self._segments:
            part.use_compiled_kernel, part.chunk_size = self.use_compiled_kernel, self.chunk_size
        return self._segments

    @classmethod
    def default_sequence(cls) -> seqs.MTSequence:
        return seqs.default_mt_sequence()

    def _sequence_columns(self, dtype: torch.dtype, device: torch.device
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(θ, θ²/TRF)`` as [T, 1] columns, cached per (sequence, dtype, device)."""
        seq = self.sequence
        key = (id(seq), dtype, device)
        entry = self._cache.get(key)
        if entry is not None and entry[0] is seq:           # (a new object may reuse an id)
            return entry[1]
        # Made outside any inference_mode so that autograd can use the cache later on.
        with torch.inference_mode(False):
            tensors = tuple(torch.as_tensor(col[:, None], dtype=dtype, device=device)
                            for col in (seq.theta, seq.theta ** 2 / seq.TRF))
        self._cache = {key: (seq, tensors)}                 # a model runs on one device at a time
        return tensors

    def _simulate(self, p: dict[str, torch.Tensor]) -> torch.Tensor:
        if self._segments is not None:
            return torch.cat([part._simulate(p) for part in self._segment_models()], -1)
        if self._compiled_applies(*p.values()):
            # Computed in float64 whatever the dtype (it costs the kernel nothing extra).
            signal = self._run_kernel(p)[0].to(p["m0s"].dtype)
            return torch.complex(signal, torch.zeros_like(signal))
        n = p["m0s"].shape[0]
        if n <= self.chunk_size:
            return self._simulate_chunk(p)
        return torch.cat([self._simulate_chunk({k: v[i:i + self.chunk_size] for k, v in p.items()})
                          for i in range(0, n, self.chunk_size)])

    def _simulate_chunk(self, p: dict[str, torch.Tensor]) -> torch.Tensor:
        rows, beta = self._voxel_rows(p)
        theta, w0 = self._sequence_columns(rows[0].dtype, rows[0].device)
        if "B1" in self.fixed:
            B1 = torch.full((1, 1), self.fixed["B1"], dtype=theta.dtype, device=theta.device)
        else:
            B1 = p["B1"][None, :]
        # [T, N], mid-TR 0 .. T-1
        r_f = _FreePoolSteadyState.apply(*rows, beta, B1, theta, w0, "B1" not in self.fixed)[0]
        signal = (r_f * torch.sin(theta * B1)).T                         # [N, T]
        return torch.complex(signal, torch.zeros_like(signal))

    def explicit_signal_and_jacobian(self, theta: torch.Tensor
                                     ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Signal [N, T] and Jacobian columns [P, N, T] from the compiled kernel
        (:mod:`._mt_kernel`): CPU, float64, outside autodiff only; None otherwise (then
        crbnet.crb takes the torch.func route through :meth:`simulate`). Set
        ``use_compiled_kernel = False`` to force that route. The signal is real, so both come
        back as real float64 tensors (the imaginary parts are zero)."""
        out = self._explicit(theta, jacobian=True)
        return None if out is None else (out[0], out[1])

    def explicit_real_gram(self, theta: torch.Tensor) -> torch.Tensor | None:
        """Gram matrix [N, P+1, P+1] of (∂f/∂θ_1, …, ∂f/∂θ_P, f) from the compiled kernel, the
        Jacobian never stored; None where :meth:`explicit_signal_and_jacobian` is None."""
        out = self._explicit(theta, gram=True)
        return None if out is None else out[2]

    def _explicit(self, theta: torch.Tensor, **outputs: bool) -> tuple | None:
        """:meth:`_run_kernel` for estimated parameters ``theta`` in float64, or None where the
        compiled route does not apply."""
        if theta.dtype != torch.float64 or not self._compiled_applies(theta):
            return None
        if self._segments is not None:
            return _mt_segments.concatenated(
                [part._explicit(theta, **outputs) for part in self._segment_models()],
                _mt_segments.KERNEL_OUTPUTS)
        return self._run_kernel(self.full_parameters(theta.detach()), **outputs)

    def _compiled_applies(self, *tensors: torch.Tensor) -> bool:
        """Whether the compiled kernel may replace the tensor code for these inputs: enabled,
        numba installed, CPU tensors that no autodiff is tracking (autograd, forward-mode dual
        tensors, torch.func transforms — the kernel's numbers carry no derivative)."""
        return (self.use_compiled_kernel and _mt_kernel.available()
                and _numba.untracked_cpu(*tensors))

    def _run_kernel(self, p: dict[str, torch.Tensor], jacobian: bool = False,
                    gram: bool = False) -> tuple:
        """(signal [N, T] — None when only the Gram matrix is asked for —, Jacobian [P, N, T]
        or None, Gram [N, P+1, P+1] or None), float64, from the full parameter set ``p``
        (detached CPU tensors)."""
        seq = self.sequence
        p = {k: v.detach().to(torch.float64) for k, v in p.items()}
        n, n_par, T = p["m0s"].shape[0], self.n_parameters, seq.n_timepoints
        # The Gram route does not need the signal itself: [N, T] would be a large temporary.
        signal = torch.empty(n, T, dtype=torch.float64) if not gram or jacobian else None
        jac = torch.empty(n_par, n, T, dtype=torch.float64) if jacobian else None
        G = torch.empty(n, n_par + 1, n_par + 1, dtype=torch.float64) if gram else None
        if n == 0:
            return signal, jac, G
        rows, beta = self._voxel_rows(p)
        b1_free = "B1" not in self.fixed
        # How the rows, beta and B1 move along each estimated parameter.
        chain = torch.zeros(n, _mt_kernel.N_DIRECTIONS, n_par, dtype=torch.float64)
        if jacobian or gram:
            d_rows = self._voxel_row_derivatives(p)              # [N, 9, 7]
            for j, name in enumerate(self.parameters):
                chain[:, :9, j] = d_rows[:, :, self._ALL.index(name)]
            if b1_free:
                chain[:, 9, self.parameters.index("B1")] = 1.0
        _mt_kernel.signal_and_jacobian(
            torch.cat(rows).T.contiguous().numpy(), beta.contiguous().numpy(),
            p["B1"].contiguous().numpy(), chain.numpy(), *self._kernel_sequence(), b1_free,
            None if signal is None else signal.numpy(), None if jac is None else jac.numpy(),
            None if G is None else G.numpy())
        return signal, jac, G

    def _kernel_sequence(self) -> tuple[np.ndarray, np.ndarray]:
        """The cached sequence columns ``(θ, θ²/TRF)`` as float64 arrays [T] for the kernel."""
        theta, w0 = self._sequence_columns(torch.float64, torch.device("cpu"))
        return theta[:, 0].numpy(), w0[:, 0].numpy()

    _ALL = ("m0s", "T1f", "T2f", "Rx", "T1s", "T2s", "B1")

    def _voxel_row_derivatives(self, p: dict[str, torch.Tensor]) -> torch.Tensor:
        """∂(rows, beta)/∂(m0s, T1f, T2f, Rx, T1s, T2s, B1) per voxel, [N, 9, 7]: the
        derivatives of the expressions in :meth:`_voxel_rows` (B1 enters only through the
        sequence columns, so its column is zero; checked against autodiff in the tests)."""
        seq = self.sequence
        h = 0.5 * seq.TR
        m0s, T1f, T2f, Rx, T1s, T2s = (p[k] for k in self._ALL[:6])
        out = torch.zeros(m0s.shape[0], 9, 7, dtype=m0s.dtype, device=m0s.device)
        M0S, T1F, T2F, RX, T1S, T2S = range(6)
        out[:, 0, M0S], out[:, 0, T1F], out[:, 0, RX] = -Rx * h, h / T1f ** 2, -m0s * h  # k_c2
        out[:, 1, T2F] = h / T2f ** 2                                                   # k_s2
        out[:, 2, T2S] = -seq.k_RF * h / seq.TR                                         # k_w
        out[:, 3, M0S], out[:, 3, RX], out[:, 3, T1S] = -Rx * h, (1 - m0s) * h, -h / T1s ** 2
        out[:, 4, M0S], out[:, 4, RX] = -Rx * h, (1 - m0s) * h                          # x_f
        out[:, 5, M0S], out[:, 5, RX] = Rx * h, m0s * h                                 # x_s
        out[:, 6, M0S], out[:, 6, T1F] = -h / T1f, -(1 - m0s) * h / T1f ** 2             # k_b
        out[:, 7, M0S], out[:, 7, T1S] = h / T1s, -m0s * h / T1s ** 2                    # b2
        out[:, 8, T2S] = -math.pi ** 2 / seq.T_inv                                      # beta
        return out

    def _voxel_rows(self, p: dict[str, torch.Tensor]):
        """Per-voxel rows [1, N] whose products with the sequence columns make ``A h`` and
        ``b h`` over half a TR (see :func:`_entries`), and the inversion's z_s factor beta [N].

        ``a11 = k_c2·cos²α + k_s2·sin²α``, ``a22 = k_w·w − k_0``, ``a12 = x_f·cos α``,
        ``a21 = x_s·cos α``, ``b1 = k_b·cos α``, b2 per voxel; α = B1·θ, w = α²/TRF."""
        seq = self.sequence
        h = 0.5 * seq.TR                                   # half a TR: TR start -> echo -> TR end
        m0s, T1f, T2f, Rx, T1s, T2s = (p[k][None, :] for k in
                                       ("m0s", "T1f", "T2f", "Rx", "T1s", "T2s"))
        x_f = Rx * (1 - m0s) * h                           # exchange, times h
        rows = (-(1 / T1f + Rx * m0s) * h,                 # k_c2
                -h / T2f,                                  # k_s2
                -seq.k_RF * h / seq.TR * T2s,              # k_w: W = k_RF·α²·T2s/(TRF·TR)
                h / T1s + x_f,                             # k_0
                x_f,
                Rx * m0s * h,                              # x_s
                (1 - m0s) * h / T1f,                       # k_b
                m0s * h / T1s)                             # b2
        beta = 1 - math.pi ** 2 * T2s[0] / seq.T_inv
        return rows, beta

    # ---- sequence design (SignalModel.signal_for_sequence; docs/design.md) ---------------
    real_signal_phase = 1.0

    def signal_for_sequence(self, theta: torch.Tensor, played) -> torch.Tensor:
        """The signal [N, T] (complex, imaginary part zero) at ``theta`` [N, P] when the model
        plays θ and TRF from ``played`` (tensors [T], rad and s; TR, T_inv and k_RF are the
        model's sequence's) — or, on a segmented sequence, α and TRF ([S, n], mapped per
        segment as :mod:`._mt_segments` does; the inversions are the sequence's) — by
        :func:`steady_state_signal`: plain tensor operations, differentiable in both."""
        if self._segments is not None:
            parts = []
            for s, part in enumerate(self._segment_models()):
                angle, trf = _mt_segments.cycle_trains(played["alpha"][s], played["TRF"][s])
                parts.append(part.signal_for_sequence(theta, {"theta": angle, "TRF": trf}))
            return torch.cat(parts, -1)
        p = self.full_parameters(theta)
        rows, beta = self._voxel_rows(p)
        angle = played["theta"][:, None]
        signal = steady_state_signal(rows, beta, p["B1"][None, :], angle,
                                     angle ** 2 / played["TRF"][:, None])
        return torch.complex(signal, torch.zeros_like(signal))
