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
  Taylor polynomial (evaluated with 7 products, Paterson–Stockmeyer in ``X⁴``; truncation
  ``θ²⁰/20! < 1e-16`` at the scaled 1-norm ``θ ≤ 1.2``); a zero flip angle is free precession,
  and the RF phase rotation commutes with it, so such a TR is ``Rot ∘ F(TR)``, one map per
  voxel; an inversion pulse is diagonal in the reduced state (its zs factor is a 2 × 2
  exponential in closed form).

Periodic state per segment (pulses 0 … n−1, echo k after pulse k): ``C_k = P_k ∘ … ∘ P_1`` maps
echo 0 to echo k (only its xf, yf rows are stored), ``A = P_0 ∘ C_{n−1}`` is one period,
``y_0 = (I − A_L)⁻¹ A_o`` and echo k is ``C_k y_0``.

Derivatives: forward mode in up to eight directions — the rates ``(m0s, R1f, R2f, Rx, R1s)``,
``T2s`` (through R2sl only), ``B1`` (through ``w = B1·α/TRF`` and R2sl) and ``ω0``. Every
factor's tangent is exact (the scaling-and-squaring steps are differentiated: the tangent of
the computed exponential is exact for the same polynomial and scaling); ``Ċ_k`` is carried
along, and ``ẏ_0 = (I − A_L)⁻¹ (Ȧ y_0)``. The caller's per-voxel factors chain the directions
to the model's parameters (``∂/∂T1 = −R1²·∂/∂R1``).

Outputs: the signal ``xf + i·yf`` at every echo, the Jacobian's columns, and/or the Fisher
matrix ``Re(JᴴJ)`` of ``J = (∂f/∂θ…, f, i·f)`` (complex M0 as nuisance), accumulated without
storing J.
"""

from __future__ import annotations

import math

import numpy as np

from crbnet.physics.models import _numba

# numba is imported and the functions below compiled (or loaded from numba's disk cache) on
# first use; until then these names are None.
numba = None
_compiled = None
_poly = _exp2 = _exp2_tangent = _free = _mul = _mul_acc = _pulse_exp = None
_lmul = _rmul = _horner_step = None
_comp = _tcomp = _lcomp = _rotate_rows = _assemble = _pulse_generator = _inversion = _solve_periodic = None

#: Elementary directions, in this order: the column indices of ``rates`` too.
DIRECTIONS = ("m0s", "R1f", "R2f", "Rx", "R1s", "T2s", "B1", "omega0")
_M0S, _R1F, _R2F, _RX, _R1S, _T2S, _B1, _W0 = range(8)

# Taylor coefficients 1/k!, k = 0 … 19, and the largest scaled 1-norm.
_TAYLOR = np.array([1.0 / math.factorial(k) for k in range(20)])
_THETA = 1.2
# The largest diagonal shift μ·t of a pulse's generator (e^{μt} must not overflow).
_MAX_SHIFT = 30.0
# 2 × 2 closed forms: power series in x = (half eigenvalue gap · t)² up to |x| = 1 (16 terms:
# truncation < 1e-28), cosh/cos beyond.
_N_SERIES = 16
_COSH = np.array([1.0 / math.factorial(2 * k) for k in range(_N_SERIES)])
_SINHC = np.array([1.0 / math.factorial(2 * k + 1) for k in range(_N_SERIES)])
_D_SINHC = np.array([(k + 1.0) / math.factorial(2 * k + 3) for k in range(_N_SERIES)])

# Reduced-state rows/columns of the full 6-vector (xf, yf, zf, xs, zs, 1).
_RED = np.array([0, 1, 2, 4, 5])


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


def _mul_python(A, B, lam, out):  # pragma: no cover - compiled
    """Top 5 rows of the affine 6 × 6 product A·B, where B's last row is ``lam·e_6``. (A row
    accumulates in scalars: numba cannot rule out that ``out`` aliases A or B, so ``out[i, j]
    +=`` would go through memory at every step — twice as slow.)"""
    for i in range(5):
        o0 = o1 = o2 = o3 = o4 = 0.0
        o5 = lam * A[i, 5]
        for k in range(5):
            a = A[i, k]
            o0 += a * B[k, 0]
            o1 += a * B[k, 1]
            o2 += a * B[k, 2]
            o3 += a * B[k, 3]
            o4 += a * B[k, 4]
            o5 += a * B[k, 5]
        out[i, 0], out[i, 1], out[i, 2], out[i, 3], out[i, 4], out[i, 5] = o0, o1, o2, o3, o4, o5


def _mul_acc_python(A, B, lam, out):  # pragma: no cover - compiled
    """``out += A·B`` (as :func:`_mul_python`)."""
    for i in range(5):
        o0, o1, o2, o3, o4 = out[i, 0], out[i, 1], out[i, 2], out[i, 3], out[i, 4]
        o5 = out[i, 5] + lam * A[i, 5]
        for k in range(5):
            a = A[i, k]
            o0 += a * B[k, 0]
            o1 += a * B[k, 1]
            o2 += a * B[k, 2]
            o3 += a * B[k, 3]
            o4 += a * B[k, 4]
            o5 += a * B[k, 5]
        out[i, 0], out[i, 1], out[i, 2], out[i, 3], out[i, 4], out[i, 5] = o0, o1, o2, o3, o4, o5


def _lmul_python(A, T, n_dir, out, accumulate):  # pragma: no cover - compiled
    """``out (+)= A·T_j`` for every direction j: A a value top [5, 6]; tangents (last rows
    0) stored by column, row, direction: T[c, r, j] ([6, 5, D]). Each output number is one
    5-term sum and the directions are contiguous, which LLVM vectorizes."""
    for c in range(6):
        for i in range(5):
            a0, a1, a2, a3, a4 = A[i, 0], A[i, 1], A[i, 2], A[i, 3], A[i, 4]
            if accumulate:
                for j in range(n_dir):
                    out[c, i, j] += (a0 * T[c, 0, j] + a1 * T[c, 1, j] + a2 * T[c, 2, j]
                                     + a3 * T[c, 3, j] + a4 * T[c, 4, j])
            else:
                for j in range(n_dir):
                    out[c, i, j] = (a0 * T[c, 0, j] + a1 * T[c, 1, j] + a2 * T[c, 2, j]
                                    + a3 * T[c, 3, j] + a4 * T[c, 4, j])


def _rmul_python(Tf, B, lam, n_dir, Of, accumulate):  # pragma: no cover - compiled
    """``out (+)= T_j·B`` for every direction j: B a value top [5, 6] with last row
    ``lam·e_6``; tangents given as flat views [6, 5·D] of their [6, 5, D] storage (``Tf``,
    ``Of``): column q of every tangent's product is one contiguous run of 5-term sums."""
    width = 5 * n_dir
    for q in range(6):
        b0, b1, b2, b3, b4 = B[0, q], B[1, q], B[2, q], B[3, q], B[4, q]
        if accumulate:
            for m in range(width):
                Of[q, m] += (b0 * Tf[0, m] + b1 * Tf[1, m] + b2 * Tf[2, m] + b3 * Tf[3, m]
                             + b4 * Tf[4, m])
        else:
            for m in range(width):
                Of[q, m] = (b0 * Tf[0, m] + b1 * Tf[1, m] + b2 * Tf[2, m] + b3 * Tf[3, m]
                            + b4 * Tf[4, m])
    for m in range(width):
        Of[5, m] += lam * Tf[5, m]


def _pulse_exp_python(M, dMf, n_dir, t, ws, dws, dwsf, E, dEf):  # pragma: no cover - compiled
    """``E = exp(M t)`` (tops of affine 6 × 6) and its tangents along those of M (tangents
    stored [6, 5, D] — column, row, direction — and given here as flat views [6, 5·D]:
    ``dMf``, ``dEf``). ``ws`` [6, 5, 6] and ``dws`` [6, 6, 5, D] (with its flat view ``dwsf``)
    are scratch."""
    # exp(Mt) = e^{−μt}·exp((M + μI)t) for any μ: shifting the diagonal (0 … −R2sl) to be
    # centred on zero about halves the norm where R2sl dominates — one squaring fewer.
    lo = hi = M[0, 0]
    for i in range(1, 5):
        lo = min(lo, M[i, i])
        hi = max(hi, M[i, i])
    mu = min(-0.5 * (lo + hi), _MAX_SHIFT / t)
    norm = 0.0
    norm_shifted = abs(mu)                 # the affine row's diagonal entry, 0 + μ
    for j in range(6):
        col = 0.0
        col_shifted = 0.0
        for i in range(5):
            col += abs(M[i, j])
            col_shifted += abs(M[i, j] + (mu if i == j else 0.0))
        norm = max(norm, col)
        norm_shifted = max(norm_shifted, col_shifted)
    if norm_shifted >= norm:
        mu = 0.0
        norm_shifted = norm
    norm = norm_shifted * t
    s = 0
    if norm > _THETA:
        s = int(math.ceil(math.log2(norm / _THETA)))
    scale = t / (2.0 ** s)
    X, X2, X3, X4, P, Q = ws[0], ws[1], ws[2], ws[3], ws[4], ws[5]
    for i in range(5):
        for j in range(6):
            X[i, j] = M[i, j] * scale
        X[i, i] += mu * scale
    # the affine matrices' last rows are lam·e_6: X's is μ·scale, its powers' the powers
    lx = mu * scale
    _mul(X, X, lx, X2)
    _mul(X2, X, lx, X3)
    _mul(X2, X2, lx * lx, X4)
    c = _TAYLOR
    width = 5 * n_dir
    dX, dX2, dX3, dX4, dP, dT = dws[0], dws[1], dws[2], dws[3], dws[4], dws[5]
    fX, fX2, fX3, fX4, fP, fT = dwsf[0], dwsf[1], dwsf[2], dwsf[3], dwsf[4], dwsf[5]
    if n_dir > 0:
        for r in range(6):
            for m in range(width):
                fX[r, m] = dMf[r, m] * scale
        _rmul(fX, X, lx, n_dir, fX2, False)
        _lmul(X, dX, n_dir, dX2, True)
        _rmul(fX2, X, lx, n_dir, fX3, False)
        _lmul(X2, dX, n_dir, dX3, True)
        _rmul(fX2, X2, lx * lx, n_dir, fX4, False)
        _lmul(X2, dX2, n_dir, dX4, True)
        for r in range(6):
            for m in range(width):
                fP[r, m] = c[17] * fX[r, m] + c[18] * fX2[r, m] + c[19] * fX3[r, m]
    # P = B4 = c16 I + c17 X + c18 X² + c19 X³ (last row lam·e_6)
    for r in range(5):
        for q in range(6):
            P[r, q] = c[17] * X[r, q] + c[18] * X2[r, q] + c[19] * X3[r, q]
        P[r, r] += c[16]
    lam = c[16] + lx * (c[17] + lx * (c[18] + lx * c[19]))
    lx4 = lx * lx * lx * lx
    for blk in range(3, -1, -1):
        base = 4 * blk
        c0, c1, c2, c3 = c[base], c[base + 1], c[base + 2], c[base + 3]
        # P ← B + X⁴·P and dP ← dB + dX⁴·P + X⁴·dP (tangents first: they need the old P);
        # the results go to the other buffer, then the buffers swap.
        if n_dir > 0:
            for r in range(6):
                for m in range(width):
                    fT[r, m] = c1 * fX[r, m] + c2 * fX2[r, m] + c3 * fX3[r, m]
            _lmul(X4, dP, n_dir, dT, True)
            _rmul(fX4, P, lam, n_dir, fT, True)
            dP, dT = dT, dP
            fP, fT = fT, fP
        _horner_step(X4, P, lam, X, X2, X3, c0, c1, c2, c3, Q)
        P, Q = Q, P
        lam = c0 + lx * (c1 + lx * (c2 + lx * c3)) + lx4 * lam
    for i in range(s):
        if n_dir > 0:
            _rmul(fP, P, lam, n_dir, fT, False)
            _lmul(P, dP, n_dir, dT, True)
            dP, dT = dT, dP
            fP, fT = fT, fP
        _mul(P, P, lam, Q)
        P, Q = Q, P
        lam = lam * lam
    back = math.exp(-mu * t)
    for r in range(5):
        for q in range(6):
            E[r, q] = P[r, q] * back
    for r in range(6):
        for m in range(width):
            dEf[r, m] = fP[r, m] * back


def _horner_step_python(X4, P, lam, X, X2, X3, c0, c1, c2, c3, out):  # pragma: no cover
    """``out = c0·I + c1·X + c2·X² + c3·X³ + X⁴·P`` (tops; P's last row ``lam·e_6``)."""
    for i in range(5):
        o0 = c1 * X[i, 0] + c2 * X2[i, 0] + c3 * X3[i, 0]
        o1 = c1 * X[i, 1] + c2 * X2[i, 1] + c3 * X3[i, 1]
        o2 = c1 * X[i, 2] + c2 * X2[i, 2] + c3 * X3[i, 2]
        o3 = c1 * X[i, 3] + c2 * X2[i, 3] + c3 * X3[i, 3]
        o4 = c1 * X[i, 4] + c2 * X2[i, 4] + c3 * X3[i, 4]
        o5 = c1 * X[i, 5] + c2 * X2[i, 5] + c3 * X3[i, 5] + lam * X4[i, 5]
        for k in range(5):
            a = X4[i, k]
            o0 += a * P[k, 0]
            o1 += a * P[k, 1]
            o2 += a * P[k, 2]
            o3 += a * P[k, 3]
            o4 += a * P[k, 4]
            o5 += a * P[k, 5]
        out[i, 0], out[i, 1], out[i, 2], out[i, 3], out[i, 4], out[i, 5] = o0, o1, o2, o3, o4, o5
        out[i, i] += c0


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


def _tcomp_python(T, B, n_dir, out, accumulate):  # pragma: no cover - compiled
    """``out[:, j] (+)= T[:, j] ∘ B`` for every direction: tangents T [4, D, 5] of a map
    applied after the map B [4, 5] (T's offsets included)."""
    for i in range(4):
        for j in range(n_dir):
            if accumulate:
                o0, o1, o2 = out[i, j, 0], out[i, j, 1], out[i, j, 2]
                o3, o4 = out[i, j, 3], out[i, j, 4] + T[i, j, 4]
            else:
                o0 = o1 = o2 = o3 = 0.0
                o4 = T[i, j, 4]
            for k in range(4):
                a = T[i, j, k]
                o0 += a * B[k, 0]
                o1 += a * B[k, 1]
                o2 += a * B[k, 2]
                o3 += a * B[k, 3]
                o4 += a * B[k, 4]
            out[i, j, 0], out[i, j, 1], out[i, j, 2] = o0, o1, o2
            out[i, j, 3], out[i, j, 4] = o3, o4


def _lcomp_python(A, Tf, n_dir, block_diagonal, Of, accumulate):  # pragma: no cover
    """``out[:, j] (+)= A_L · T[:, j]`` for every direction (a map's linear part applied to
    tangents [4, D, 5], given as flat-row views [4, 5·D]: each row of the result is one
    contiguous run). With ``block_diagonal``, A_L couples only (xf, yf) and (zf, zs)."""
    width = 5 * n_dir
    for i in range(4):
        if block_diagonal:
            # rows 0, 1 use rows 0, 1 of T; rows 2, 3 use rows 2, 3
            k0 = 0 if i < 2 else 2
            a0, a1 = A[i, k0], A[i, k0 + 1]
            if accumulate:
                for m in range(width):
                    Of[i, m] += a0 * Tf[k0, m] + a1 * Tf[k0 + 1, m]
            else:
                for m in range(width):
                    Of[i, m] = a0 * Tf[k0, m] + a1 * Tf[k0 + 1, m]
        else:
            a0, a1, a2, a3 = A[i, 0], A[i, 1], A[i, 2], A[i, 3]
            if accumulate:
                for m in range(width):
                    Of[i, m] += a0 * Tf[0, m] + a1 * Tf[1, m] + a2 * Tf[2, m] + a3 * Tf[3, m]
            else:
                for m in range(width):
                    Of[i, m] = a0 * Tf[0, m] + a1 * Tf[1, m] + a2 * Tf[2, m] + a3 * Tf[3, m]


def _rotate_rows_python(rc, rs, T, n_dir, out):  # pragma: no cover - compiled
    """``out = Rot · T`` for tangents [4, D, 5] (the RF phase advance turns xf, yf)."""
    for j in range(n_dir):
        for q in range(5):
            x, y = T[0, j, q], T[1, j, q]
            out[0, j, q] = rc * x - rs * y
            out[1, j, q] = rs * x + rc * y
            out[2, j, q] = T[2, j, q]
            out[3, j, q] = T[3, j, q]


def _assemble_python(F, dF, R, dR, rc, rs, n_dir, G, dG, dGf, H, dH, dHf, P, dP, dPf
                     ):  # pragma: no cover - compiled
    """``P = F ∘ R ∘ Rot ∘ F`` and its tangents [4, D, 5] from the factors' (``…f``: the
    tangents' flat-row views [4, 5·D])."""
    for j in range(5):
        G[0, j] = rc * F[0, j] - rs * F[1, j]
        G[1, j] = rs * F[0, j] + rc * F[1, j]
        G[2, j] = F[2, j]
        G[3, j] = F[3, j]
    _comp(R, G, True, H)
    _comp(F, H, True, P)
    if n_dir == 0:
        return
    _rotate_rows(rc, rs, dF, n_dir, dG)
    _tcomp(dR, G, n_dir, dH, False)
    _lcomp(R, dGf, n_dir, False, dHf, True)
    _tcomp(dF, H, n_dir, dP, False)
    _lcomp(F, dHf, n_dir, True, dPf, True)


def _pulse_generator_python(rv, a, trf, r2, d_t2s, d_b1, dirs, M, dM):  # pragma: no cover
    """The generator M (top 5 rows of the affine 6 × 6) of a pulse and its tangents dM [6, 5, D] (column, row, direction)."""
    m0s, R1f, R2f, Rx, R1s, B1, w0 = rv[0], rv[1], rv[2], rv[3], rv[4], rv[6], rv[7]
    m0f = 1.0 - m0s
    w = B1 * a / trf
    M[:, :] = 0.0
    M[0, 0], M[0, 1], M[0, 2] = -R2f, -w0, w
    M[1, 0], M[1, 1] = w0, -R2f
    M[2, 0], M[2, 2], M[2, 4], M[2, 5] = -w, -R1f - Rx * m0s, Rx * m0f, R1f * m0f
    M[3, 3], M[3, 4] = -r2, w
    M[4, 2], M[4, 3], M[4, 4], M[4, 5] = Rx * m0s, -w, -R1s - Rx * m0f, R1s * m0s
    for j in range(dirs.shape[0]):
        dM[:, :, j] = 0.0
        k = dirs[j]
        if k == _M0S:
            dM[2, 2, j], dM[4, 2, j], dM[5, 2, j] = -Rx, -Rx, -R1f
            dM[2, 4, j], dM[4, 4, j], dM[5, 4, j] = Rx, Rx, R1s
        elif k == _R1F:
            dM[2, 2, j], dM[5, 2, j] = -1.0, m0f
        elif k == _R2F:
            dM[0, 0, j], dM[1, 1, j] = -1.0, -1.0
        elif k == _RX:
            dM[2, 2, j], dM[4, 2, j] = -m0s, m0f
            dM[2, 4, j], dM[4, 4, j] = m0s, -m0f
        elif k == _R1S:
            dM[4, 4, j], dM[5, 4, j] = -1.0, m0s
        elif k == _T2S:
            dM[3, 3, j] = -d_t2s
        elif k == _B1:
            dw = a / trf
            dM[2, 0, j], dM[0, 2, j], dM[4, 3, j], dM[3, 4, j] = dw, -dw, dw, -dw
            dM[3, 3, j] = -d_b1
        else:
            dM[1, 0, j], dM[0, 1, j] = -1.0, 1.0


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


def _solve_periodic_python(A, dA, n_dir, work, y, dy):  # pragma: no cover - compiled
    """``y = (I − A_L)⁻¹ A_o`` and ``dy[j] = (I − A_L)⁻¹ (dA_L[:, j] y + dA_o[:, j])``
    (Gauss–Jordan with partial pivoting on [I − A_L | rhs…]); dA [4, D, 5], work [4, 5 + D]."""
    m = 5 + n_dir
    for i in range(4):
        for j in range(4):
            work[i, j] = (1.0 if i == j else 0.0) - A[i, j]
        work[i, 4] = A[i, 4]
    for col in range(4):
        piv = col
        for i in range(col + 1, 4):
            if abs(work[i, col]) > abs(work[piv, col]):
                piv = i
        if piv != col:
            for j in range(5):
                work[col, j], work[piv, j] = work[piv, j], work[col, j]
        inv = 1.0 / work[col, col]
        for i in range(4):
            if i != col:
                fct = work[i, col] * inv
                for j in range(col, 5):
                    work[i, j] -= fct * work[col, j]
    for i in range(4):
        y[i] = work[i, 4] / work[i, i]
    if n_dir == 0:
        return
    # tangents: a second elimination with the right-hand sides dA y + dA_o
    for i in range(4):
        for j in range(4):
            work[i, j] = (1.0 if i == j else 0.0) - A[i, j]
        for d in range(n_dir):
            acc = dA[i, d, 4]
            for k in range(4):
                acc += dA[i, d, k] * y[k]
            work[i, 5 + d] = acc
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
    for d in range(n_dir):
        for i in range(4):
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
    (rad, s), ``inversion`` [S, n] (uint8); TR (s); RF phase increment (rad)."""
    n_vox = rates.shape[0]
    n_seg, n = alpha.shape
    n_dir = dirs.shape[0] if (want_jac or want_fisher) else 0
    nd1 = max(n_dir, 1)
    rc, rs = math.cos(increment), math.sin(increment)
    n_blocks = (n_vox + _BLOCK - 1) // _BLOCK
    for ib in numba.prange(n_blocks):
        g = np.empty(9)
        e4 = np.empty(4)
        F = np.empty((4, 5))
        dF = np.empty((4, nd1, 5))
        R = np.empty((4, 5))
        dR = np.empty((4, nd1, 5))
        Z = np.empty((4, 5))
        dZ = np.empty((4, nd1, 5))
        G = np.empty((4, 5))
        dG = np.empty((4, nd1, 5))
        H = np.empty((4, 5))
        dH = np.empty((4, nd1, 5))
        P0 = np.empty((4, 5))
        dP0 = np.empty((4, nd1, 5))
        Pk = np.empty((4, 5))
        dPk = np.empty((4, nd1, 5))
        C = np.empty((4, 5))
        dC = np.empty((4, nd1, 5))
        Cn = np.empty((4, 5))
        dCn = np.empty((4, nd1, 5))
        M = np.empty((5, 6))
        dM = np.empty((6, 5, nd1))
        E = np.empty((5, 6))
        dE = np.empty((6, 5, nd1))
        ws = np.empty((6, 5, 6))
        dws = np.empty((6, 6, 5, nd1))
        work = np.empty((4, 5 + nd1))
        y = np.empty(4)
        dy = np.empty((nd1, 4))
        # flat-row views of the tangents (made once: a reshape costs ~15 ns)
        dGf = dG.reshape(4, nd1 * 5)
        dHf = dH.reshape(4, nd1 * 5)
        dP0f = dP0.reshape(4, nd1 * 5)
        dPkf = dPk.reshape(4, nd1 * 5)
        dCf = dC.reshape(4, nd1 * 5)
        dCnf = dCn.reshape(4, nd1 * 5)
        dMf = dM.reshape(6, 5 * nd1)
        dEf = dE.reshape(6, 5 * nd1)
        dwsf = dws.reshape(6, 6, 5 * nd1)
        rows = np.empty((n, 2, 5))
        drows = np.empty((n if n_dir > 0 else 1, 2, nd1, 5))
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
            _rotate_rows(rc, rs, dF, n_dir, dZ)
            if want_fisher:
                acc[:, :] = 0.0
            for seg in range(n_seg):
                for k in range(n):
                    P = P0 if k == 0 else Pk
                    dP = dP0 if k == 0 else dPk
                    dPf = dP0f if k == 0 else dPkf
                    a = alpha[seg, k]
                    trf = TRF[seg, k]
                    r2 = R2sl[v, seg, k]
                    dt2 = dR2_dT2s[v, seg, k]
                    db1 = dR2_dB1[v, seg, k]
                    if inversion[seg, k]:
                        _free(0.5 * TR, rv, dirs[:n_dir], g, e4, F, dF)
                        _inversion(rv, a, trf, r2, dt2, db1, dirs[:n_dir], g, e4, R, dR)
                        _assemble(F, dF, R, dR, rc, rs, n_dir, G, dG, dGf, H, dH, dHf, P, dP,
                                  dPf)
                    elif a == 0.0:
                        P[:, :] = Z[:, :]
                        if n_dir > 0:
                            dP[:, :, :] = dZ[:, :, :]
                    else:
                        _free(0.5 * (TR - trf), rv, dirs[:n_dir], g, e4, F, dF)
                        _pulse_generator(rv, a, trf, r2, dt2, db1, dirs[:n_dir], M, dM)
                        _pulse_exp(M, dMf, n_dir, trf, ws, dws, dwsf, E, dEf)
                        for i in range(4):
                            ri = i if i < 3 else 4
                            for j in range(5):
                                cj = j if j < 3 else j + 1
                                R[i, j] = E[ri, cj]
                                for d in range(n_dir):
                                    dR[i, d, j] = dE[cj, ri, d]
                        _assemble(F, dF, R, dR, rc, rs, n_dir, G, dG, dGf, H, dH, dHf, P, dP,
                                  dPf)
                    if k == 0:
                        C[:, :] = 0.0
                        for i in range(4):
                            C[i, i] = 1.0
                        dC[:, :, :] = 0.0
                    else:
                        _comp(Pk, C, True, Cn)
                        if n_dir > 0:
                            _tcomp(dPk, C, n_dir, dCn, False)
                            _lcomp(Pk, dCf, n_dir, False, dCnf, True)
                            dC[:, :, :] = dCn[:, :, :]
                        C[:, :] = Cn[:, :]
                    for i in range(2):
                        for j in range(5):
                            rows[k, i, j] = C[i, j]
                    if n_dir > 0:
                        drows[k, :, :, :] = dC[:2, :, :]
                # one period from echo 0: A = P_0 ∘ C_{n−1}
                _comp(P0, C, True, Cn)
                if n_dir > 0:
                    _tcomp(dP0, C, n_dir, dCn, False)
                    _lcomp(P0, dCf, n_dir, False, dCnf, True)
                _solve_periodic(Cn, dCn, n_dir, work, y, dy)
                for k in range(n):
                    t = seg * n + k
                    for i in range(2):
                        f = rows[k, i, 4]
                        for q in range(4):
                            f += rows[k, i, q] * y[q]
                        u[i, n_dir] = f
                        for d in range(n_dir):
                            df = drows[k, i, d, 4]
                            for q in range(4):
                                df += drows[k, i, d, q] * y[q] + rows[k, i, q] * dy[d, q]
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


_HELPERS = ("_poly", "_exp2", "_exp2_tangent", "_free", "_mul", "_mul_acc", "_lmul", "_rmul",
            "_horner_step", "_pulse_exp",
            "_comp", "_tcomp", "_lcomp", "_rotate_rows", "_assemble", "_pulse_generator", "_inversion",
            "_solve_periodic")


def _load():
    """The compiled kernel (compiling it, or loading it from numba's disk cache, on first use)."""
    global numba, _compiled
    if _compiled is None:
        numba = _numba.module()
        fast = {"reassoc", "contract"}
        try:
            for name in _HELPERS:
                globals()[name] = numba.njit(cache=True, nogil=True, fastmath=fast)(
                    globals()[name + "_python"])
        except RuntimeError:      # no writable cache directory: compile in every process
            for name in _HELPERS:
                globals()[name] = numba.njit(nogil=True, fastmath=fast)(
                    globals()[name + "_python"])
        _compiled = _numba.compile_parallel(_kernel_python)
    return _compiled


def run(rates, scale, R2sl, dR2_dT2s, dR2_dB1, alpha, TRF, inversion, TR, increment, dirs,
        signal=None, jac=None, fisher=None) -> None:
    """Run the kernel (arguments as :func:`_kernel_python`, float64 / int64 / uint8 numpy
    arrays; each output is filled when given) on as many threads as PyTorch uses."""
    if rates.shape[0] == 0:
        return
    kernel = _load()
    e3, e4 = np.empty((1, 1, 1)), np.empty((1, 1, 1, 1))
    with _numba.threads():
        kernel(rates, scale, R2sl, dR2_dT2s, dR2_dB1, alpha, TRF, inversion, float(TR),
               float(increment), dirs, e3 if signal is None else signal, signal is not None,
               e4 if jac is None else jac, jac is not None,
               e3 if fisher is None else fisher, fisher is not None)


#: Whether the kernel can be used (numba installed and importable).
available = _numba.available
