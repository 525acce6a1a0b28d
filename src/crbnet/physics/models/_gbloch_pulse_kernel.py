"""The pulse's propagator for the compiled generalized-Bloch kernel (:mod:`._gbloch_kernel`).

A pulse (rectangular, flip angle α, duration TRF) acts through the affine 6 × 6 generator M of
``(xf, yf, zf, xs, zs, 1)``; its exponential is needed in two forms:

* pass 1 (values): ``exp(M·TRF)`` as a matrix on the reduced state (rows and columns xf, yf,
  zf, zs and the affine column) — :func:`_pulse_exp_python`: scaling and squaring with a
  degree-19 Taylor polynomial (Paterson–Stockmeyer in ``X⁴``, ``X²`` and ``X³`` through M's 15
  structural nonzeros), the diagonal shifted to its middle first;
* pass 2 (derivatives): the exponential applied to one state and its Fréchet derivatives along
  the generator's tangents applied to the same state — :func:`_pulse_vec_python`: the Taylor
  series on the vector by Horner's rule, differentiated, in substeps of norm ≤ 6, degree from
  the truncation bound (:data:`_DEGREE_NU`).

The ``…_python`` functions are compiled by :func:`compile_helpers` (from
:func:`._gbloch_kernel._load`); until then the plain names are None.
"""

from __future__ import annotations

import math

import numpy as np

_mul = _mul_pattern = _pattern_norm = _mul_reduced = _horner_step = None
_pulse_exp = _pulse_generator = _pulse_vec = None

#: The compiled functions of this module, in an order in which each one's callees come first.
HELPERS = ("_mul", "_mul_pattern", "_pattern_norm", "_mul_reduced", "_horner_step", "_pulse_exp",
           "_pulse_generator", "_pulse_vec")

#: Elementary directions, in this order: the column indices of ``rates`` too.
DIRECTIONS = ("m0s", "R1f", "R2f", "Rx", "R1s", "T2s", "B1", "omega0")
_M0S, _R1F, _R2F, _RX, _R1S, _T2S, _B1, _W0 = range(8)

# Taylor coefficients 1/k!, k = 0 … 19 (the largest scaled norm, _THETA, below).
_TAYLOR = np.array([1.0 / math.factorial(k) for k in range(20)])
# The largest diagonal shift μ·t of a pulse's generator (e^{μt} must not overflow).
_MAX_SHIFT = 30.0
# The pulse applied to a vector (pass 2): Taylor degrees up to 60; the largest norm per
# substep; for each degree m the largest norm ν whose truncation bound
# ν^m/m!/(1 − ν/(m+1)) (it bounds the tangent's; the value's is ν/(m+1) times smaller) is
# below 2⁻⁵³.
_TAYLOR_LONG = np.array([1.0 / math.factorial(k) for k in range(61)])
_SUBSTEP = 6.0


def _degree_table() -> np.ndarray:
    nu = np.zeros(61)
    for m in range(1, 61):
        lo, hi = 0.0, m + 1.0
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            bound = math.exp(m * math.log(mid) - math.lgamma(m + 1)) / (1 - mid / (m + 1))
            lo, hi = (mid, hi) if bound <= 2.0 ** -53 else (lo, mid)
        nu[m] = lo
    nu[60] = math.inf          # never reached: ν ≤ _SUBSTEP needs m ≈ 40
    return nu


_DEGREE_NU = _degree_table()
# Pass 1's degree-19 Taylor polynomial: the largest scaled norm θ whose truncation
# Σ_{k≥20} θ^k/k! ≤ θ^20/20!/(1 − θ/21) is below 2⁻⁵³ (θ ≈ 1.32).
_THETA = float(_DEGREE_NU[20])
# The generator's structural nonzeros (row, column) in the 5 × 6 top of the affine 6 × 6
# (xf, yf, zf, xs, zs, 1): the free pool couples xf–yf (ω0) and xf–zf (RF), exchange zf–zs,
# the semi-solid pool zs–xs (RF); every parameter's tangent lives on the same positions.
_PAT_ROW = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 4, 4, 4, 4])
_PAT_COL = np.array([0, 1, 2, 0, 1, 0, 2, 4, 5, 3, 4, 2, 3, 4, 5])


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


def _pulse_exp_python(M, t, ws, R):  # pragma: no cover - compiled
    """``R = exp(M t)`` on the reduced state (rows and columns xf, yf, zf, zs and the affine
    column: [4, 5]; values only): scaling and squaring with the
    degree-19 Taylor polynomial (Paterson–Stockmeyer in ``X⁴``); ``ws`` [6, 5, 6] is scratch."""
    # exp(Mt) = e^{−μt}·exp((M + μI)t) for any μ: shifting the diagonal (0 … −R2sl) to be
    # centred on zero about halves the norm where R2sl dominates — one squaring fewer.
    lo = hi = M[0, 0]
    for i in range(1, 5):
        lo = min(lo, M[i, i])
        hi = max(hi, M[i, i])
    mu = min(-0.5 * (lo + hi), _MAX_SHIFT / t)
    norm = _pattern_norm(M, 0.0)
    norm_shifted = _pattern_norm(M, mu)
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
    _mul_pattern(X, X, lx, X2)
    _mul_pattern(X, X2, lx * lx, X3)
    _mul(X2, X2, lx * lx, X4)
    c = _TAYLOR
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
        _horner_step(X4, P, lam, X, X2, X3, c0, c1, c2, c3, Q)
        P, Q = Q, P
        lam = c0 + lx * (c1 + lx * (c2 + lx * c3)) + lx4 * lam
    back = math.exp(-mu * t)
    for i in range(s - 1):
        _mul(P, P, lam, Q)
        P, Q = Q, P
        lam = lam * lam
    if s > 0:
        _mul_reduced(P, P, lam, back, R)        # the last squaring: only the rows kept
    else:
        for i in range(4):
            ri = i if i < 3 else 4
            for j in range(5):
                R[i, j] = P[ri, j if j < 3 else j + 1] * back


def _mul_reduced_python(A, B, lam, scale, R):  # pragma: no cover - compiled
    """``R = scale·(A·B)`` restricted to the reduced state: rows and columns (xf, yf, zf, zs)
    and the affine column (tops of affine 6 × 6, B's last row ``lam·e_6``; R [4, 5])."""
    for i in range(4):
        ri = i if i < 3 else 4
        a0, a1, a2, a3, a4 = A[ri, 0], A[ri, 1], A[ri, 2], A[ri, 3], A[ri, 4]
        o0 = a0 * B[0, 0] + a1 * B[1, 0] + a2 * B[2, 0] + a3 * B[3, 0] + a4 * B[4, 0]
        o1 = a0 * B[0, 1] + a1 * B[1, 1] + a2 * B[2, 1] + a3 * B[3, 1] + a4 * B[4, 1]
        o2 = a0 * B[0, 2] + a1 * B[1, 2] + a2 * B[2, 2] + a3 * B[3, 2] + a4 * B[4, 2]
        o4 = a0 * B[0, 4] + a1 * B[1, 4] + a2 * B[2, 4] + a3 * B[3, 4] + a4 * B[4, 4]
        o5 = (a0 * B[0, 5] + a1 * B[1, 5] + a2 * B[2, 5] + a3 * B[3, 5] + a4 * B[4, 5]
              + lam * A[ri, 5])
        R[i, 0], R[i, 1], R[i, 2] = o0 * scale, o1 * scale, o2 * scale
        R[i, 3], R[i, 4] = o4 * scale, o5 * scale


def _mul_pattern_python(X, B, lam, out):  # pragma: no cover - compiled
    """``out = X·B`` (tops of affine 6 × 6, B's last row ``lam·e_6``) where X has only the
    generator's structural nonzeros (:data:`_PATTERN`)."""
    for q in range(6):
        b0, b1, b2, b3, b4 = B[0, q], B[1, q], B[2, q], B[3, q], B[4, q]
        b5 = lam if q == 5 else 0.0
        out[0, q] = X[0, 0] * b0 + X[0, 1] * b1 + X[0, 2] * b2
        out[1, q] = X[1, 0] * b0 + X[1, 1] * b1
        out[2, q] = X[2, 0] * b0 + X[2, 2] * b2 + X[2, 4] * b4 + X[2, 5] * b5
        out[3, q] = X[3, 3] * b3 + X[3, 4] * b4
        out[4, q] = X[4, 2] * b2 + X[4, 3] * b3 + X[4, 4] * b4 + X[4, 5] * b5


def _pattern_norm_python(M, mu):  # pragma: no cover - compiled
    """1-norm of the affine 6 × 6 ``M + μI`` (M its top 5 rows, last row μ·e_6) from the
    generator's structural nonzeros (:data:`_PAT_ROW`, :data:`_PAT_COL`)."""
    c0 = abs(M[0, 0] + mu) + abs(M[1, 0]) + abs(M[2, 0])
    c1 = abs(M[0, 1]) + abs(M[1, 1] + mu)
    c2 = abs(M[0, 2]) + abs(M[2, 2] + mu) + abs(M[4, 2])
    c3 = abs(M[3, 3] + mu) + abs(M[4, 3])
    c4 = abs(M[2, 4]) + abs(M[3, 4]) + abs(M[4, 4] + mu)
    c5 = abs(M[2, 5]) + abs(M[4, 5]) + abs(mu)
    return max(max(max(c0, c1), max(c2, c3)), max(c4, c5))


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


def _pulse_generator_python(rv, a, trf, r2, d_t2s, d_b1, dirs, M, dMp):  # pragma: no cover
    """The generator M (top 5 rows of the affine 6 × 6) of a pulse and its tangents at the
    15 pattern positions (:data:`_PATTERN`) in dMp [15, D]."""
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
        for p in range(15):
            dMp[p, j] = 0.0
        k = dirs[j]
        if k == _M0S:
            dMp[6, j], dMp[7, j], dMp[8, j] = -Rx, -Rx, -R1f
            dMp[11, j], dMp[13, j], dMp[14, j] = Rx, Rx, R1s
        elif k == _R1F:
            dMp[6, j], dMp[8, j] = -1.0, m0f
        elif k == _R2F:
            dMp[0, j], dMp[4, j] = -1.0, -1.0
        elif k == _RX:
            dMp[6, j], dMp[7, j], dMp[11, j], dMp[13, j] = -m0s, m0f, m0s, -m0f
        elif k == _R1S:
            dMp[13, j], dMp[14, j] = -1.0, m0s
        elif k == _T2S:
            dMp[9, j] = -d_t2s
        elif k == _B1:
            dw = a / trf
            dMp[2, j], dMp[5, j], dMp[10, j], dMp[12, j] = dw, -dw, dw, -dw
            dMp[9, j] = -d_b1
        else:
            dMp[1, j], dMp[3, j] = -1.0, 1.0


def _pulse_vec_python(M, dMp, n_dir, t, u, Y, dY, d, dv, out):  # pragma: no cover - compiled
    """The pulse applied to one state and differentiated along the generator's tangents:
    ``out = exp(M t)·(u₀, u₁, u₂, 0, u₃, 1)`` (5 rows: xf, yf, zf, xs, zs) and
    ``d[:, j] = L(M t, dM_j t)·(same vector)`` [5, D] (the Fréchet derivative applied to the
    state: the input's own tangent is applied separately, by the pulse's matrix).

    Taylor series of the shifted generator ``Y = (M + μI)·h`` applied to the vector by Horner's
    rule (``h_m = v/m!``, ``h_k = v/k! + Y h_{k+1}``), differentiated (``dh_k = Y dh_{k+1} +
    dY h_{k+1}``), over ``s`` substeps ``h = t/s`` with ``‖Y‖ ≤ _SUBSTEP``; the degree m is the
    smallest whose truncation bound ``ν^m/m!/(1 − ν/(m+1))`` is below ``2⁻⁵³`` (:data:`_DEGREE_NU`).
    Only the generator's 15 structural nonzeros (:data:`_PATTERN`) enter. ``Y`` [15], ``dY``
    [15, D], ``dv`` [5, D] are scratch."""
    lo = hi = M[0, 0]
    for i in range(1, 5):
        lo = min(lo, M[i, i])
        hi = max(hi, M[i, i])
    mu = min(-0.5 * (lo + hi), _MAX_SHIFT / t)
    # 1- and ∞-norms of the affine 6 × 6, shifted by μ and not (either bounds the series)
    n1 = n1s = 0.0
    ninf, ninfs = 0.0, abs(mu)
    n1s = abs(mu)
    for j in range(6):
        col = col_s = 0.0
        for i in range(5):
            col += abs(M[i, j])
            col_s += abs(M[i, j] + (mu if i == j else 0.0))
        if j == 5:
            col_s += abs(mu)
        n1 = max(n1, col)
        n1s = max(n1s, col_s)
    for i in range(5):
        row = row_s = 0.0
        for j in range(6):
            row += abs(M[i, j])
            row_s += abs(M[i, j] + (mu if i == j else 0.0))
        ninf = max(ninf, row)
        ninfs = max(ninfs, row_s)
    norm = min(n1, ninf)
    norm_s = min(n1s, ninfs)
    if norm_s >= norm:
        mu = 0.0
        norm_s = norm
    nu = norm_s * t
    s = max(1, int(math.ceil(nu / _SUBSTEP)))
    h = t / s
    nus = nu / s
    m = 1
    while _DEGREE_NU[m] < nus:
        m += 1
    for p in range(15):
        Y[p] = M[_PAT_ROW[p], _PAT_COL[p]] * h
        for j in range(n_dir):
            dY[p, j] = dMp[p, j] * h
    Y[0] += mu * h
    Y[4] += mu * h
    Y[6] += mu * h
    Y[9] += mu * h
    Y[13] += mu * h
    lam = mu * h
    y0, y1, y2, y3, y4, y5, y6, y7 = Y[0], Y[1], Y[2], Y[3], Y[4], Y[5], Y[6], Y[7]
    y8, y9, y10, y11, y12, y13, y14 = Y[8], Y[9], Y[10], Y[11], Y[12], Y[13], Y[14]
    c = _TAYLOR_LONG
    v0, v1, v2, v3, v4, v5 = u[0], u[1], u[2], 0.0, u[3], 1.0
    for sub in range(s):
        cm = c[m]
        h0, h1, h2, h3, h4, h5 = cm * v0, cm * v1, cm * v2, cm * v3, cm * v4, cm * v5
        for r in range(5):
            for j in range(n_dir):
                d[r, j] = cm * dv[r, j] if sub > 0 else 0.0
        for k in range(m - 1, -1, -1):
            ck = c[k]
            for j in range(n_dir):
                d0, d1, d2, d3, d4 = d[0, j], d[1, j], d[2, j], d[3, j], d[4, j]
                e0 = y0 * d0 + y1 * d1 + y2 * d2 + dY[0, j] * h0 + dY[1, j] * h1 + dY[2, j] * h2
                e1 = y3 * d0 + y4 * d1 + dY[3, j] * h0 + dY[4, j] * h1
                e2 = (y5 * d0 + y6 * d2 + y7 * d4 + dY[5, j] * h0 + dY[6, j] * h2
                      + dY[7, j] * h4 + dY[8, j] * h5)
                e3 = y9 * d3 + y10 * d4 + dY[9, j] * h3 + dY[10, j] * h4
                e4 = (y11 * d2 + y12 * d3 + y13 * d4 + dY[11, j] * h2 + dY[12, j] * h3
                      + dY[13, j] * h4 + dY[14, j] * h5)
                if sub > 0:
                    e0 += ck * dv[0, j]
                    e1 += ck * dv[1, j]
                    e2 += ck * dv[2, j]
                    e3 += ck * dv[3, j]
                    e4 += ck * dv[4, j]
                d[0, j], d[1, j], d[2, j], d[3, j], d[4, j] = e0, e1, e2, e3, e4
            g0 = ck * v0 + y0 * h0 + y1 * h1 + y2 * h2
            g1 = ck * v1 + y3 * h0 + y4 * h1
            g2 = ck * v2 + y5 * h0 + y6 * h2 + y7 * h4 + y8 * h5
            g3 = ck * v3 + y9 * h3 + y10 * h4
            g4 = ck * v4 + y11 * h2 + y12 * h3 + y13 * h4 + y14 * h5
            g5 = ck * v5 + lam * h5
            h0, h1, h2, h3, h4, h5 = g0, g1, g2, g3, g4, g5
        v0, v1, v2, v3, v4, v5 = h0, h1, h2, h3, h4, h5
        if sub + 1 < s:
            for r in range(5):
                for j in range(n_dir):
                    dv[r, j] = d[r, j]
    back = math.exp(-mu * t)
    out[0], out[1], out[2], out[3], out[4] = v0 * back, v1 * back, v2 * back, v3 * back, v4 * back
    for r in range(5):
        for j in range(n_dir):
            d[r, j] *= back


def compile_helpers(numba, options: dict) -> None:
    """Replace this module's helpers by their numba-compiled versions (``numba.njit(**options)``)."""
    for name in HELPERS:
        globals()[name] = numba.njit(**options)(globals()[name + "_python"])
