"""Compiled generalized-Bloch steady state and its forward-mode derivative (CPU, float64).

The same mathematics as :mod:`.gbloch_steady_state` (its docstring holds the physics), written
as one loop per voxel with the maps and their tangents in small scratch arrays.

Reduced state. The semi-solid pool's x component is 0 entering every pulse (free precession
leaves it alone and the spoiler after it zeroes it) and is discarded after it, so one TR is an
affine map on ``u = (xf, yf, zf, zs)``: a 4 × 5 matrix ``[L | o]`` (``u ↦ L u + o``).
``P_k = F_k ∘ Pulse_k ∘ Rot ∘ F_k`` with

* ``F`` (free precession): ``(xf, yf)`` decay by ``e^{−R2f t}`` and turn by ``ω0 t``;
  ``(zf, zs)`` relax towards ``(1 − m0s, m0s)`` under a 2 × 2 relaxation–exchange matrix whose
  exponential is in closed form (cosh/sinh of the half eigenvalue gap; power series where
  that gap is small);
* a pulse: the 6 × 6 affine exponential ``exp(M·TRF)`` by scaling and squaring with a degree-19
  Taylor polynomial (evaluated with 7 products, Paterson–Stockmeyer in ``X⁴``, the first two
  through M's 15 structural nonzeros; truncation below 2⁻⁵³ at the scaled 1-norm
  ``θ ≤ 1.32``); a zero flip angle is free precession, and the RF phase rotation commutes with
  it, so such a TR is ``Rot ∘ F(TR)``, one map per voxel; an inversion pulse is diagonal in the
  reduced state (its zs factor is a 2 × 2 exponential in closed form).

Pass 1, values, per segment (pulses 0 … n−1, echo k after pulse k): ``C_k = P_k ∘ … ∘ P_1``
maps echo 0 to echo k (each pulse's factors applied to ``C_{k−1}`` in turn; only the xf, yf rows
are stored), ``A = P_0 ∘ C_{n−1}`` is one period, ``y_0 = (I − A_L)⁻¹ A_o`` and echo k is
``C_k y_0``.

Pass 2, derivatives (forward mode, vectors instead of matrices): up to eight directions — the
rates ``(m0s, R1f, R2f, Rx, R1s)``, ``T2s`` (through R2sl only), ``B1`` (through
``w = B1·α/TRF`` and R2sl) and ``ω0``. The state is carried once around the period from
``y_0`` with tangents started at 0; through each factor ``T ← P_L T + Ṗ·(y, 1)``, where a
pulse's ``Ṗ·(y, 1)`` is the Fréchet derivative of its exponential applied to the state, from
the Taylor series on the vector differentiated (Horner: ``dh ← Y dh + dY h``; degree from the
series' truncation bound, substeps of norm ≤ 6) and ``P_L`` the matrix from pass 1. The
tangent after pulse k is then ``Ċ_k y_0``, after the whole period ``Ȧ y_0``, so
``ẏ_0 = (I − A_L)⁻¹ Ȧ y_0`` and echo k's tangent is ``Ċ_k y_0 + C_k ẏ_0``. The caller's
per-voxel factors chain the directions to the model's parameters (``∂/∂T1 = −R1²·∂/∂R1``).

Outputs: the signal ``xf + i·yf`` at every echo, the Jacobian's columns, and/or the Fisher
matrix ``Re(JᴴJ)`` of ``J = (∂f/∂θ…, f, i·f)`` (complex M0 as nuisance), accumulated without
storing J.
"""

from __future__ import annotations

import contextlib
import math
import os

import numpy as np

from crbnet.physics.models import _gbloch_pulse_kernel, _numba
from crbnet.physics.models._gbloch_pulse_kernel import (  # noqa: F401 - re-exported
    _B1,
    _DEGREE_NU,
    _M0S,
    _R1F,
    _R1S,
    _R2F,
    _RX,
    _SUBSTEP,
    _T2S,
    _W0,
    DIRECTIONS,
)

# numba is imported and the functions below compiled (or loaded from numba's disk cache) on
# first use; until then these names are None (the pulse's helpers come from _gbloch_pulse_kernel).
numba = None
_compiled = None
_poly = _exp2 = _exp2_tangent = _free = _comp = None
_apply_map = _rotate_state = _inversion = _rotate_map = _block_comp = _solve_periodic = None
_pulse_exp = _pulse_generator = _pulse_vec = None

# 2 × 2 closed forms: power series in x = (half eigenvalue gap · t)² up to |x| = 1 (16 terms:
# truncation < 1e-28), cosh/cos beyond.
_N_SERIES = 16
_COSH = np.array([1.0 / math.factorial(2 * k) for k in range(_N_SERIES)])
_SINHC = np.array([1.0 / math.factorial(2 * k + 1) for k in range(_N_SERIES)])
_D_SINHC = np.array([(k + 1.0) / math.factorial(2 * k + 3) for k in range(_N_SERIES)])


def _poly_python(c, x):  # pragma: no cover - compiled
    acc = 0.0
    for k in range(c.shape[0] - 1, -1, -1):
        acc = acc * x + c[k]
    return acc


def _exp2_python(a, b, c, d, t, g):  # pragma: no cover - compiled
    """``g = (e^{τt}·cosh r, e^{τt}·sinh(r)/r, e^{τt}·∂(sinh(r)/r)/∂x, p, x)`` for the 2 × 2
    matrix [[a, b], [c, d]] and time t: τ = (a+d)/2, p = (a−d)/2, x = r² = t²(p² + bc)
    (negative: cos/sin). Then ``exp(At) = gC·I + gS·t·[[p, b], [c, −p]]``."""
    tau = 0.5 * (a + d)
    p = 0.5 * (a - d)
    x = t * t * (p * p + b * c)
    if abs(x) <= 1.0:
        e = math.exp(tau * t)
        gC = e * _poly(_COSH, x)
        gS = e * _poly(_SINHC, x)
        gD = e * _poly(_D_SINHC, x)
    elif x > 0:
        r = math.sqrt(x)
        ep = math.exp(tau * t + r)
        em = math.exp(tau * t - r)
        gC = 0.5 * (ep + em)
        gS = 0.5 * (ep - em) / r
        gD = (gC - gS) / (2 * x)
    else:
        r = math.sqrt(-x)
        e = math.exp(tau * t)
        gC = e * math.cos(r)
        gS = e * math.sin(r) / r
        gD = (gC - gS) / (2 * x)
    g[0], g[1], g[2], g[3], g[4] = gC, gS, gD, p, x
    g[5] = gC + gS * t * p
    g[6] = gS * t * b
    g[7] = gS * t * c
    g[8] = gC - gS * t * p


def _exp2_tangent_python(g, b, c, t, da, db, dc, dd, out):  # pragma: no cover - compiled
    """The tangent of exp(At) (entries 11, 12, 21, 22 into ``out``) along (da, db, dc, dd)."""
    gS, gD, p = g[1], g[2], g[3]
    dtau = 0.5 * (da + dd)
    dp = 0.5 * (da - dd)
    dx = t * t * (2 * p * dp + b * dc + c * db)
    dC = 0.5 * gS * dx
    dS = gD * dx
    out[0] = t * dtau * g[5] + dC + t * (dS * p + gS * dp)
    out[1] = t * dtau * g[6] + t * (dS * b + gS * db)
    out[2] = t * dtau * g[7] + t * (dS * c + gS * dc)
    out[3] = t * dtau * g[8] + dC - t * (dS * p + gS * dp)


def _free_python(h, rates, dirs, g, e4, F, dF):  # pragma: no cover - compiled
    """Free precession for h seconds as a reduced map F [4, 5] and its tangents dF [4, D, 5]."""
    m0s, R1f, R2f, Rx, R1s, w0 = rates[0], rates[1], rates[2], rates[3], rates[4], rates[7]
    m0f = 1.0 - m0s
    e = math.exp(-R2f * h)
    cw = math.cos(w0 * h)
    sw = math.sin(w0 * h)
    a = -(R1f + Rx * m0s)
    b = Rx * m0f
    c = Rx * m0s
    d = -(R1s + Rx * m0f)
    _exp2(a, b, c, d, h, g)
    F[:, :] = 0.0
    F[0, 0] = e * cw
    F[0, 1] = -e * sw
    F[1, 0] = e * sw
    F[1, 1] = e * cw
    F[2, 2], F[2, 3], F[3, 2], F[3, 3] = g[5], g[6], g[7], g[8]
    F[2, 4] = m0f - (g[5] * m0f + g[6] * m0s)
    F[3, 4] = m0s - (g[7] * m0f + g[8] * m0s)
    for j in range(dirs.shape[0]):
        dF[:, j, :] = 0.0
        k = dirs[j]
        if k == _R2F:
            for r in range(2):
                for q in range(2):
                    dF[r, j, q] = -h * F[r, q]
        elif k == _W0:
            dF[0, j, 0] = -h * e * sw
            dF[0, j, 1] = -h * e * cw
            dF[1, j, 0] = h * e * cw
            dF[1, j, 1] = -h * e * sw
        elif k == _M0S or k == _R1F or k == _RX or k == _R1S:
            da = db = dc = dd = 0.0
            dz1 = dz2 = 0.0
            if k == _M0S:
                da, db, dc, dd = -Rx, -Rx, Rx, Rx
                dz1, dz2 = -1.0, 1.0
            elif k == _R1F:
                da = -1.0
            elif k == _RX:
                da, db, dc, dd = -m0s, m0f, m0s, -m0f
            else:
                dd = -1.0
            _exp2_tangent(g, b, c, h, da, db, dc, dd, e4)
            dF[2, j, 2], dF[2, j, 3], dF[3, j, 2], dF[3, j, 3] = e4[0], e4[1], e4[2], e4[3]
            # offset o = z_eq − E z_eq
            dF[2, j, 4] = dz1 - (e4[0] * m0f + e4[1] * m0s) - (g[5] * dz1 + g[6] * dz2)
            dF[3, j, 4] = dz2 - (e4[2] * m0f + e4[3] * m0s) - (g[7] * dz1 + g[8] * dz2)


def _comp_python(A, B, add_off, out):  # pragma: no cover - compiled
    """``out = A ∘ B`` for reduced maps [4, 5]; without ``add_off`` A's offset is left out."""
    for i in range(4):
        o0 = o1 = o2 = o3 = 0.0
        o4 = A[i, 4] if add_off else 0.0
        for k in range(4):
            a = A[i, k]
            o0 += a * B[k, 0]
            o1 += a * B[k, 1]
            o2 += a * B[k, 2]
            o3 += a * B[k, 3]
            o4 += a * B[k, 4]
        out[i, 0], out[i, 1], out[i, 2], out[i, 3], out[i, 4] = o0, o1, o2, o3, o4


def _apply_map_python(A, dA, n_dir, block_diagonal, y, T, yn, Tn):  # pragma: no cover
    """One reduced map with its tangents applied to a state and its tangents: ``yn = A_L y +
    A_o`` and ``Tn[:, j] = A_L T[:, j] + dA_j·(y, 1)`` (T [4, D], dA [4, D, 5]). With
    ``block_diagonal`` A_L couples only (xf, yf) and (zf, zs)."""
    for i in range(4):
        acc = A[i, 4]
        for q in range(4):
            acc += A[i, q] * y[q]
        yn[i] = acc
    for i in range(4):
        k0 = 0 if i < 2 else 2
        for j in range(n_dir):
            acc = dA[i, j, 4]
            for q in range(4):
                acc += dA[i, j, q] * y[q]
            if block_diagonal:
                acc += A[i, k0] * T[k0, j] + A[i, k0 + 1] * T[k0 + 1, j]
            else:
                acc += A[i, 0] * T[0, j] + A[i, 1] * T[1, j] + A[i, 2] * T[2, j] + A[i, 3] * T[3, j]
            Tn[i, j] = acc


def _rotate_state_python(rc, rs, n_dir, y, T):  # pragma: no cover - compiled
    """The RF phase advance (turns xf, yf) applied in place to a state and its tangents."""
    x = y[0]
    y[0] = rc * x - rs * y[1]
    y[1] = rs * x + rc * y[1]
    for j in range(n_dir):
        x = T[0, j]
        T[0, j] = rc * x - rs * T[1, j]
        T[1, j] = rs * x + rc * T[1, j]


def _rotate_map_python(rc, rs, F, out):  # pragma: no cover - compiled
    """``out = Rot ∘ F`` (the RF phase advance turns xf, yf)."""
    for j in range(5):
        out[0, j] = rc * F[0, j] - rs * F[1, j]
        out[1, j] = rs * F[0, j] + rc * F[1, j]
        out[2, j] = F[2, j]
        out[3, j] = F[3, j]


def _block_comp_python(A, B, out):  # pragma: no cover - compiled
    """``out = A ∘ B`` for reduced maps [4, 5] where A_L couples only (xf, yf) and (zf, zs)."""
    for i in range(4):
        k0 = 0 if i < 2 else 2
        a0, a1 = A[i, k0], A[i, k0 + 1]
        for q in range(5):
            out[i, q] = a0 * B[k0, q] + a1 * B[k0 + 1, q]
        out[i, 4] += A[i, 4]


def _inversion_python(rv, a, trf, r2, d_t2s, d_b1, dirs, g, e4, R, dR):  # pragma: no cover
    """The reduced map of an inversion pulse (diagonal) and its tangents."""
    beta = rv[6] * a
    w = beta / trf
    sb, cb = math.sin(beta), math.cos(beta)
    s2 = math.sin(0.5 * beta) ** 2
    _exp2(-r2, w, -w, 0.0, trf, g)
    R[:, :] = 0.0
    R[0, 0], R[1, 1], R[2, 2], R[3, 3] = s2, -s2, cb, g[8]
    for j in range(dirs.shape[0]):
        dR[:, j, :] = 0.0
        k = dirs[j]
        if k == _T2S:
            _exp2_tangent(g, w, -w, trf, -d_t2s, 0.0, 0.0, 0.0, e4)
            dR[3, j, 3] = e4[3]
        elif k == _B1:
            dw = a / trf
            _exp2_tangent(g, w, -w, trf, -d_b1, dw, -dw, 0.0, e4)
            dR[0, j, 0] = 0.5 * sb * a
            dR[1, j, 1] = -0.5 * sb * a
            dR[2, j, 2] = -sb * a
            dR[3, j, 3] = e4[3]


def _solve_periodic_python(A, rhs, n_dir, work, y, dy):  # pragma: no cover - compiled
    """``y = (I − A_L)⁻¹ A_o`` and ``dy[j] = (I − A_L)⁻¹ rhs[:, j]`` (Gauss–Jordan with
    partial pivoting on [I − A_L | A_o | rhs…]); rhs [4, D], work [4, 5 + D]."""
    m = 5 + n_dir
    for i in range(4):
        for j in range(4):
            work[i, j] = (1.0 if i == j else 0.0) - A[i, j]
        work[i, 4] = A[i, 4]
        for d in range(n_dir):
            work[i, 5 + d] = rhs[i, d]
    for col in range(4):
        piv = col
        for i in range(col + 1, 4):
            if abs(work[i, col]) > abs(work[piv, col]):
                piv = i
        if piv != col:
            for j in range(m):
                work[col, j], work[piv, j] = work[piv, j], work[col, j]
        inv = 1.0 / work[col, col]
        for i in range(4):
            if i != col:
                fct = work[i, col] * inv
                for j in range(col, m):
                    work[i, j] -= fct * work[col, j]
    for i in range(4):
        y[i] = work[i, 4] / work[i, i]
        for d in range(n_dir):
            dy[d, i] = work[i, 5 + d] / work[i, i]


# Voxels per parallel work item (scratch is allocated once per item).
_BLOCK = 4


def _kernel_python(rates, scale, R2sl, dR2_dT2s, dR2_dB1, alpha, TRF, inversion, TR, increment,
                   dirs, signal, want_signal, jac, want_jac, fisher, want_fisher
                   ):  # pragma: no cover - compiled
    """Fill ``signal`` [N, S·n, 2] (xf, yf at every echo), ``jac`` [D, N, S·n, 2] (the
    directions ``dirs`` times ``scale`` [N, D]) and ``fisher`` [N, D+2, D+2] as asked.

    ``rates`` [N, 8] in the order of :data:`DIRECTIONS` (T2s in s; the rest rates 1/s, m0s,
    B1, ω0 rad/s); ``R2sl`` and its T2s and B1 derivatives [N, S, n]; ``alpha``, ``TRF`` [S, n]
    (rad, s), ``inversion`` [S, n] (uint8); TR (s); RF phase increment (rad).

    Per segment, pass 1 (values) builds every pulse's map, composes ``C_k`` (its xf, yf rows
    kept) and solves for the periodic state ``y_0``; with derivatives, pass 2 carries the state
    and its tangents (started at 0) once around the period — the tangents at echo k are then
    ``Ċ_k y_0``, at the end ``Ȧ y_0`` — and ``ẏ_0 = (I − A_L)⁻¹ Ȧ y_0`` completes them."""
    n_vox = rates.shape[0]
    n_seg, n = alpha.shape
    n_dir = dirs.shape[0] if (want_jac or want_fisher) else 0
    nd1 = max(n_dir, 1)
    rc, rs = math.cos(increment), math.sin(increment)
    n_blocks = (n_vox + _BLOCK - 1) // _BLOCK
    no_dirs = dirs[:0]
    for ib in numba.prange(n_blocks):
        g = np.empty(9)
        e4 = np.empty(4)
        F = np.empty((4, 5))
        dF = np.empty((4, nd1, 5))
        R = np.empty((4, 5))
        dR = np.empty((4, nd1, 5))
        Z = np.empty((4, 5))
        dZ = np.empty((4, nd1, 5))
        RF = np.empty((4, 5))
        H = np.empty((4, 5))
        P0 = np.empty((4, 5))
        C = np.empty((4, 5))
        Cn = np.empty((4, 5))
        M = np.empty((5, 6))
        dMp = np.empty((15, nd1))
        ws = np.empty((6, 5, 6))
        Yp = np.empty(15)
        dYp = np.empty((15, nd1))
        dpul = np.empty((5, nd1))
        dsub = np.empty((5, nd1))
        pul = np.empty(5)
        work = np.empty((4, 5 + nd1))
        y0 = np.empty(4)
        dy0 = np.empty((nd1, 4))
        ys = np.empty(4)
        yn = np.empty(4)
        T = np.empty((4, nd1))
        Tn = np.empty((4, nd1))
        rows = np.empty((n, 2, 5))
        n_t = n if n_dir > 0 else 1
        drows = np.empty((n_t, 2, nd1))
        Estore = np.empty((n_t, 4, 4))
        u = np.empty((2, nd1 + 2))
        acc = np.empty((nd1 + 2, nd1 + 2))
        for v in range(ib * _BLOCK, min(n_vox, (ib + 1) * _BLOCK)):
            rv = rates[v]
            # the TR of a zero flip angle: Rot ∘ F(TR)
            _free(TR, rv, dirs[:n_dir], g, e4, F, dF)
            for j in range(5):
                Z[0, j] = rc * F[0, j] - rs * F[1, j]
                Z[1, j] = rs * F[0, j] + rc * F[1, j]
                Z[2, j] = F[2, j]
                Z[3, j] = F[3, j]
            for j in range(n_dir):
                for q in range(5):
                    x = dF[0, j, q]
                    dZ[0, j, q] = rc * x - rs * dF[1, j, q]
                    dZ[1, j, q] = rs * x + rc * dF[1, j, q]
                    dZ[2, j, q] = dF[2, j, q]
                    dZ[3, j, q] = dF[3, j, q]
            if want_fisher:
                acc[:, :] = 0.0
            for seg in range(n_seg):
                # pass 1: values. Pulse 0's map is kept (it closes the period); every other
                # pulse's factors are applied to C_{k−1} one by one (free precession and the
                # zero-flip TR are block diagonal: (xf, yf) ⊕ (zf, zs)).
                h_last = -1.0
                for k in range(n):
                    a = alpha[seg, k]
                    trf = TRF[seg, k]
                    pulse_map = False
                    if inversion[seg, k]:
                        _free(0.5 * TR, rv, no_dirs, g, e4, F, dF)
                        _rotate_map(rc, rs, F, RF)
                        h_last = -1.0
                        _inversion(rv, a, trf, R2sl[v, seg, k], 0.0, 0.0, no_dirs, g, e4, R, dR)
                        pulse_map = True
                    elif a != 0.0:
                        h = 0.5 * (TR - trf)
                        if h != h_last:
                            _free(h, rv, no_dirs, g, e4, F, dF)
                            _rotate_map(rc, rs, F, RF)
                            h_last = h
                        _pulse_generator(rv, a, trf, R2sl[v, seg, k], 0.0, 0.0, no_dirs, M,
                                         dMp)
                        _pulse_exp(M, trf, ws, R)
                        if n_dir > 0:
                            for i in range(4):
                                for j in range(4):
                                    Estore[k, i, j] = R[i, j]
                        pulse_map = True
                    if k == 0:
                        if pulse_map:
                            _comp(R, RF, True, H)
                            _block_comp(F, H, P0)
                        else:
                            P0[:, :] = Z[:, :]
                        C[:, :] = 0.0
                        for i in range(4):
                            C[i, i] = 1.0
                    elif pulse_map:
                        _block_comp(RF, C, Cn)
                        _comp(R, Cn, True, C)
                        _block_comp(F, C, Cn)
                        C, Cn = Cn, C
                    else:
                        _block_comp(Z, C, Cn)
                        C, Cn = Cn, C
                    for i in range(2):
                        for j in range(5):
                            rows[k, i, j] = C[i, j]
                # one period from echo 0: A = P_0 ∘ C_{n−1}
                _comp(P0, C, True, Cn)
                if n_dir > 0:
                    # pass 2: the state from y_0 and its tangents from 0, once around
                    _solve_periodic(Cn, T, 0, work, y0, dy0)
                    ys[:] = y0[:]
                    T[:, :] = 0.0
                    drows[0, :, :] = 0.0
                    h_last = -1.0
                    for kk in range(1, n + 1):
                        k = kk if kk < n else 0
                        a = alpha[seg, k]
                        trf = TRF[seg, k]
                        if inversion[seg, k]:
                            _free(0.5 * TR, rv, dirs[:n_dir], g, e4, F, dF)
                            h_last = -1.0
                            _inversion(rv, a, trf, R2sl[v, seg, k], dR2_dT2s[v, seg, k],
                                       dR2_dB1[v, seg, k], dirs[:n_dir], g, e4, R, dR)
                            _apply_map(F, dF, n_dir, True, ys, T, yn, Tn)
                            _rotate_state(rc, rs, n_dir, yn, Tn)
                            _apply_map(R, dR, n_dir, False, yn, Tn, ys, T)
                            _apply_map(F, dF, n_dir, True, ys, T, yn, Tn)
                        elif a == 0.0:
                            _apply_map(Z, dZ, n_dir, True, ys, T, yn, Tn)
                        else:
                            h = 0.5 * (TR - trf)
                            if h != h_last:
                                _free(h, rv, dirs[:n_dir], g, e4, F, dF)
                                h_last = h
                            _apply_map(F, dF, n_dir, True, ys, T, yn, Tn)
                            _rotate_state(rc, rs, n_dir, yn, Tn)
                            _pulse_generator(rv, a, trf, R2sl[v, seg, k], dR2_dT2s[v, seg, k],
                                             dR2_dB1[v, seg, k], dirs[:n_dir], M, dMp)
                            _pulse_vec(M, dMp, n_dir, trf, yn, Yp, dYp, dpul, dsub, pul)
                            # tangent through the pulse: its matrix on the incoming tangents
                            # plus its own derivative applied to the state
                            for i in range(4):
                                ri = i if i < 3 else 4
                                ys[i] = pul[ri]
                                e0, e1, e2, e3 = (Estore[k, i, 0], Estore[k, i, 1],
                                                  Estore[k, i, 2], Estore[k, i, 3])
                                for j in range(n_dir):
                                    T[i, j] = (dpul[ri, j] + e0 * Tn[0, j] + e1 * Tn[1, j]
                                               + e2 * Tn[2, j] + e3 * Tn[3, j])
                            _apply_map(F, dF, n_dir, True, ys, T, yn, Tn)
                        ys[:] = yn[:]
                        T[:, :n_dir] = Tn[:, :n_dir]
                        if k > 0:
                            drows[k, :, :] = T[:2, :]
                    _solve_periodic(Cn, T, n_dir, work, y0, dy0)
                else:
                    _solve_periodic(Cn, T, 0, work, y0, dy0)
                for k in range(n):
                    t = seg * n + k
                    for i in range(2):
                        f = rows[k, i, 4]
                        for q in range(4):
                            f += rows[k, i, q] * y0[q]
                        u[i, n_dir] = f
                        for d in range(n_dir):
                            df = drows[k, i, d]
                            for q in range(4):
                                df += rows[k, i, q] * dy0[d, q]
                            u[i, d] = df * scale[v, d]
                    u[0, n_dir + 1] = -u[1, n_dir]
                    u[1, n_dir + 1] = u[0, n_dir]
                    if want_signal:
                        signal[v, t, 0] = u[0, n_dir]
                        signal[v, t, 1] = u[1, n_dir]
                    if want_jac:
                        for d in range(n_dir):
                            jac[d, v, t, 0] = u[0, d]
                            jac[d, v, t, 1] = u[1, d]
                    if want_fisher:
                        for p in range(n_dir + 2):
                            for q in range(p + 1):
                                acc[p, q] += u[0, p] * u[0, q] + u[1, p] * u[1, q]
            if want_fisher:
                for p in range(n_dir + 2):
                    for q in range(p + 1):
                        fisher[v, p, q] = acc[p, q]
                        fisher[v, q, p] = acc[p, q]


_HELPERS = ("_poly", "_exp2", "_exp2_tangent", "_free", "_comp", "_apply_map", "_rotate_state",
            "_rotate_map", "_block_comp", "_inversion", "_solve_periodic")


def _compile_helpers(options: dict) -> None:
    _gbloch_pulse_kernel.compile_helpers(numba, options)
    for name in _gbloch_pulse_kernel.HELPERS:
        globals()[name] = getattr(_gbloch_pulse_kernel, name)
    for name in _HELPERS:
        globals()[name] = numba.njit(**options)(globals()[name + "_python"])


def _load():
    """The compiled kernel (compiling it, or loading it from numba's disk cache, on first use)."""
    global numba, _compiled
    if _compiled is None:
        numba = _numba.module()
        options = dict(cache=True, nogil=True, fastmath={"reassoc", "contract"})
        try:
            _compile_helpers(options)
        except RuntimeError:      # no writable cache directory: compile in every process
            options["cache"] = False
            _compile_helpers(options)
        _compiled = _numba.compile_parallel(_kernel_python)
    return _compiled


def run(rates, scale, R2sl, dR2_dT2s, dR2_dB1, alpha, TRF, inversion, TR, increment, dirs,
        signal=None, jac=None, fisher=None) -> None:
    """Run the kernel (arguments as :func:`_kernel_python`, float64 / int64 / uint8 numpy
    arrays; each output is filled when given) on as many threads as PyTorch uses."""
    if rates.shape[0] == 0:
        return
    global _first_call_done
    kernel = _load()
    e3, e4 = np.empty((1, 1, 1)), np.empty((1, 1, 1, 1))
    # numba compiles (or loads from its cache) on the first call: only that one needs SLP on.
    slp = contextlib.nullcontext() if _first_call_done else _slp_vectorization()
    with _numba.threads(), slp:
        kernel(rates, scale, R2sl, dR2_dT2s, dR2_dB1, alpha, TRF, inversion, float(TR),
               float(increment), dirs, e3 if signal is None else signal, signal is not None,
               e4 if jac is None else jac, jac is not None,
               e3 if fisher is None else fisher, fisher is not None)
    _first_call_done = True


#: Set after the kernel's first call (which compiled it or loaded it from the cache).
_first_call_done = False


@contextlib.contextmanager
def _slp_vectorization():
    """LLVM's SLP vectorizer for whatever numba compiles inside (this kernel, on first use).
    numba leaves it off by default (since 0.57, after miscompilations reported elsewhere); here
    it packs the independent sums of the small matrix products into SIMD registers — simulate
    ~25 % faster, measured — and the tests hold the compiled kernel to the tensor route. A
    user's ``NUMBA_SLP_VECTORIZE`` wins; numba's setting is restored afterwards."""
    if "NUMBA_SLP_VECTORIZE" in os.environ:
        yield
        return
    config = numba.config
    before = config.SLP_VECTORIZE
    config.SLP_VECTORIZE = 1
    try:
        yield
    finally:
        config.SLP_VECTORIZE = before


#: Whether the kernel can be used (numba installed and importable).
available = _numba.available
