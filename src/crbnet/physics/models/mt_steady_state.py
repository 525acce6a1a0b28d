"""The periodic steady state of the hybrid-state MT model (docs/physics.md §1; the physics is in
:mod:`crbnet.physics.models.mt_hybrid_state`) in plain tensor operations: its value, and its
derivatives in every autodiff mode, on any device.

Implementation notes (speed only):

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
"""

from __future__ import annotations

import torch

from crbnet.physics.models._mt_scan import (
    _block_starts,
    _by_step,
    _inversion_after_last,
    _linear,
    _march,
    _periodic_start,
    _scan_cycle,
    _scan_log,
    _solve_periodic,
)

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


__all__ = ["steady_state_signal"]
