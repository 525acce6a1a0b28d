"""Compiled MT hybrid-state steady state and its forward-mode derivative (CPU, float64).

The same mathematics as :class:`~crbnet.physics.models.mt_steady_state._FreePoolSteadyState` —
:mod:`crbnet.physics.models.mt_hybrid_state`'s docstring holds the physics — written as one
loop per voxel so that the state, its tangents and the 2×2 maps stay in registers instead of
streaming ``[T, N]`` tensors through memory (which is what bounds the PyTorch version on a
CPU). numba compiles it once per machine (cached on disk) and runs voxels in parallel threads
(numba's OpenMP layer where available: a process that forks after using the kernel should
start its workers with "spawn").

Directions differentiated: the eight voxel rows ``(k_c2, k_s2, k_w, k_0, x_f, x_s, k_b, b2)``
whose products with the sequence columns make ``A h`` and ``b h``, the inversion's z_s factor
``beta``, and (optionally) ``B1``. The caller chains these to the model parameters; that chain
is a tiny per-voxel matrix.

Per voxel, four steps, none of them iterating cycles:

1. the flow of every TR (``E``, ``y∞`` and the closed-form coefficients the tangents need);
2. the state as an affine function of the unknown state ``z₀`` at mid-TR 0: marching the map
   ``(L_n, v_n)`` around the cycle gives the cycle map ``(K, k)`` and ``z₀ = (I − K)⁻¹ k``;
3. the tangents, marched from zero along the now known trajectory with the forcing
   ``Σ_q G_q q̇`` per half TR (as in the PyTorch ``jvp`` rule); the periodic tangent start is
   ``(I − K)⁻¹`` times the cycle-end tangent, and adding ``L_n`` times it gives every mid-TR;
4. the chain to the parameters and the factor sin(B1·θ) of the signal, giving the Jacobian's
   columns, and, if asked for, their Gram matrix with the signal.
"""

from __future__ import annotations

import math

import numpy as np

from crbnet.physics.models import _numba

# numba is imported, and the kernel compiled (or loaded from numba's on-disk cache), on first
# use: importing numba alone would add a quarter of a second to every crbnet start.
numba = None
_gram = None
_half_tr_map = None
_propagate = None
_poly = None
_compiled = None

# Up to this x = r², cosh r, sinh(r)/r and ∂(sinh(r)/r)/∂x come from their power series in x
# (12 terms: truncation below 1e-20 relative), beyond it from exp/expm1 — where r ≥ 1, so
# neither form cancels. r is clamped in cosh/sinh as in mt_hybrid_state (see there).
_SERIES_X = 1.0
_R_CLAMP = 20.0
_N_SERIES = 12
_COSH = tuple(1.0 / math.factorial(2 * k) for k in range(_N_SERIES))
_SINHC = tuple(1.0 / math.factorial(2 * k + 1) for k in range(_N_SERIES))
_D_SINHC = tuple((k + 1.0) / math.factorial(2 * k + 3) for k in range(_N_SERIES))

# Directions: the eight rows, then beta, then B1.
N_DIRECTIONS = 10

# Per-TR quantities kept between the value and the tangent pass (one row per TR).
_E11, _E12, _E21, _E22, _YI1, _YI2, _S, _D, _DD, _A12, _A21 = range(11)
_N1A, _N1B, _N2A, _N2B, _C, _C2, _S2, _W, _SN = range(11, 20)
_N_FLOW = 20
# Voxels per parallel work item.
_BLOCK = 16


def _signal_and_jacobian(rows, beta, B1, chain, theta, w0, b1_free, signal, want_signal,
                         jac, want_jac, gram, want_gram):  # pragma: no cover
    """Fill ``signal`` [N, T] (``r_f · sin(B1·θ)`` at every mid-TR) if ``want_signal``,
    ``jac`` [P, N, T] if ``want_jac``, and ``gram`` [N, P+1, P+1] — the Gram matrix of the
    Jacobian's columns and the signal, all a real signal's Fisher information needs — if
    ``want_gram``; without the last two, steps 3 and 4 are skipped. N ≥ 1.

    ``rows`` [N, 8], ``beta`` [N], ``B1`` [N]; ``chain`` [N, 10, P]: how the eight rows, beta
    and B1 move along each parameter (the B1 row is ignored unless ``b1_free``; if B1 is not
    free it must be the same in every voxel); ``theta`` and ``w0 = θ²/TRF`` [T]. All float64.
    """
    n_vox = rows.shape[0]
    T = theta.shape[0]
    n_par = chain.shape[2]
    n_dir = 9 + (1 if b1_free else 0)
    # With B1 fixed, cos and sin of the angles θ (half the flip angles) are the same in every voxel.
    cos_fixed = np.cos(B1[0] * theta)
    sin_fixed = np.sin(B1[0] * theta)
    # Scratch is allocated once per block of voxels: one allocation per voxel (≈200 kB) would
    # go through mmap and page faults, which serialize the threads.
    n_blocks = (n_vox + _BLOCK - 1) // _BLOCK
    for ib in numba.prange(n_blocks):
        flow = np.empty((T, _N_FLOW))
        l0 = np.empty(T)                                # r_f at mid-TR n = l0·z0[0] + l1·z0[1] + lv
        l1 = np.empty(T)
        lv = np.empty(T)
        # Tangents' r_f, marched from zero: column 0 (mid-TR 0, the start) stays zero, and so
        # does row 8 — beta's tangent has no forcing before the inversion that ends the cycle,
        # so it is zero at every recorded mid-TR and enters through the periodic start alone.
        zrow = np.zeros((10, T))
        cols = np.empty((n_par + 1, T))                 # the Jacobian's columns, then f
        r_f = np.empty(T)
        for i in range(ib * _BLOCK, min(n_vox, (ib + 1) * _BLOCK)):
            k_c2, k_s2, k_w, k_0 = rows[i, 0], rows[i, 1], rows[i, 2], rows[i, 3]
            x_f, x_s, k_b, b2 = rows[i, 4], rows[i, 5], rows[i, 6], rows[i, 7]
            b1v = B1[i]
            # ---- 1. flow of each TR -----------------------------------------------------------
            for n in range(T):
                if b1_free:
                    alpha = b1v * theta[n]
                    c = math.cos(alpha)
                    s = math.sin(alpha)
                else:
                    c = cos_fixed[n]
                    s = sin_fixed[n]
                c2, s2, w = c * c, s * s, w0[n] * b1v * b1v
                a11 = c2 * k_c2 + s2 * k_s2
                a22 = w * k_w - k_0
                a12 = x_f * c
                a21 = x_s * c
                bb1 = k_b * c
                mu = 0.5 * (a11 + a22)
                d = 0.5 * (a11 - a22)
                off = a12 * a21
                x = d * d + off
                exp_mu = math.exp(mu)
                if x <= _SERIES_X:
                    # cosh √x, sinh(√x)/√x and its x-derivative as power series in x: no sqrt,
                    # no expm1, no division, exact to round-off (truncation < 1e-20)
                    C = exp_mu * _poly(_COSH, x)
                    S = exp_mu * _poly(_SINHC, x)
                    D = exp_mu * _poly(_D_SINHC, x)
                else:
                    r = math.sqrt(x)
                    r_c = min(r, _R_CLAMP)
                    scale = exp_mu if r == r_c else math.exp(mu + (r - r_c))
                    # cosh and sinh from one expm1
                    em = math.expm1(r_c)
                    inv_e = 1.0 / (em + 1.0)
                    inv_r = 1.0 / r
                    C = scale * 0.5 * (em + 1.0 + inv_e)
                    S = scale * (0.5 * em * (em + 2.0) * inv_e * inv_r)
                    D = (C - S) * (0.5 * inv_r * inv_r)
                e11, e12, e21, e22 = C + S * d, S * a12, S * a21, C - S * d
                inv_det = 1.0 / (a11 * a22 - off)
                yi1 = (a12 * b2 - a22 * bb1) * inv_det
                yi2 = (a21 * bb1 - a11 * b2) * inv_det
                # (I − E)(−A⁻¹ e_j): how y∞ moves the half-TR map
                p1, p2 = -inv_det * a22, inv_det * a21
                q1, q2 = inv_det * a12, -inv_det * a11
                flow[n, _E11] = e11
                flow[n, _E12] = e12
                flow[n, _E21] = e21
                flow[n, _E22] = e22
                flow[n, _YI1] = yi1
                flow[n, _YI2] = yi2
                flow[n, _S] = S
                flow[n, _D] = D
                flow[n, _DD] = d
                flow[n, _A12] = a12
                flow[n, _A21] = a21
                flow[n, _N1A] = p1 - (e11 * p1 + e12 * p2)
                flow[n, _N1B] = p2 - (e21 * p1 + e22 * p2)
                flow[n, _N2A] = q1 - (e11 * q1 + e12 * q2)
                flow[n, _N2B] = q2 - (e21 * q1 + e22 * q2)
                flow[n, _C] = c
                flow[n, _C2] = c2
                flow[n, _S2] = s2
                flow[n, _W] = w
                flow[n, _SN] = s
            # ---- 2. the state as an affine function of z0 ---------------------------------------
            L11, L12, L21, L22, v1, v2 = 1.0, 0.0, 0.0, 1.0, 0.0, 0.0
            l0[0], l1[0], lv[0] = 1.0, 0.0, 0.0
            for n in range(T):
                for half in range(2):
                    m = n if half == 0 else (n + 1 if n + 1 < T else 0)
                    e11, e12, e21, e22, yi1, yi2 = _half_tr_map(flow, m)
                    L11, L12, L21, L22 = (e11 * L11 + e12 * L21, e11 * L12 + e12 * L22,
                                          e21 * L11 + e22 * L21, e21 * L12 + e22 * L22)
                    u1, u2 = v1 - yi1, v2 - yi2
                    v1, v2 = e11 * u1 + e12 * u2 + yi1, e21 * u1 + e22 * u2 + yi2
                    if half == 0 and n == T - 1:                # the inversion ends the cycle
                        L11, L12, v1 = -L11, -L12, -v1
                        L21, L22, v2 = beta[i] * L21, beta[i] * L22, beta[i] * v2
                if n + 1 < T:
                    l0[n + 1], l1[n + 1], lv[n + 1] = L11, L12, v1
            # (I − K) z0 = k
            m11, m12, m21, m22 = 1.0 - L11, -L12, -L21, 1.0 - L22
            inv_m = 1.0 / (m11 * m22 - m12 * m21)
            z1 = (m22 * v1 - m12 * v2) * inv_m
            z2 = (m11 * v2 - m21 * v1) * inv_m
            for n in range(T):
                r_f[n] = l0[n] * z1 + l1[n] * z2 + lv[n]
                cols[n_par, n] = r_f[n] * flow[n, _SN]
                if want_signal:
                    signal[i, n] = cols[n_par, n]
            if not (want_jac or want_gram):
                continue
            # ---- 3. tangents from zero along the trajectory ------------------------------------
            # One (r_f, z_s) pair per direction, in scalars so that they stay in registers.
            za0 = za1 = za2 = za3 = za4 = za5 = za6 = za7 = za8 = za9 = 0.0
            zb0 = zb1 = zb2 = zb3 = zb4 = zb5 = zb6 = zb7 = zb8 = zb9 = 0.0
            ya, yb = z1, z2
            dbl_c2 = 2.0 * (k_s2 - k_c2)
            for n in range(T):
                for half in range(2):
                    m = n if half == 0 else (n + 1 if n + 1 < T else 0)
                    e11, e12, e21, e22, yi1, yi2 = _half_tr_map(flow, m)
                    S, D, d = flow[m, _S], flow[m, _D], flow[m, _DD]
                    a12, a21 = flow[m, _A12], flow[m, _A21]
                    n1a, n1b = flow[m, _N1A], flow[m, _N1B]
                    n2a, n2b = flow[m, _N2A], flow[m, _N2B]
                    u1, u2 = ya - yi1, yb - yi2
                    ev1, ev2 = e11 * u1 + e12 * u2, e21 * u1 + e22 * u2
                    sv1, sv2 = S * u1, S * u2
                    Q1 = 0.5 * sv1 + D * (d * u1 + a12 * u2)
                    Q2 = 0.5 * sv2 + D * (a21 * u1 - d * u2)
                    h1, h2 = 0.5 * (ev1 + sv1), 0.5 * (ev2 - sv2)
                    # forcing coefficients of the entries a11, a22, a12, a21, b1 (= n1), b2 (= n2)
                    g11a = h1 + d * Q1 + yi1 * n1a
                    g11b = h2 + d * Q2 + yi1 * n1b
                    g22a = ev1 - h1 - d * Q1 + yi2 * n2a
                    g22b = ev2 - h2 - d * Q2 + yi2 * n2b
                    g12a = a21 * Q1 + sv2 + yi2 * n1a
                    g12b = a21 * Q2 + yi2 * n1b
                    g21a = a12 * Q1 + yi1 * n2a
                    g21b = a12 * Q2 + sv1 + yi1 * n2b
                    c, c2, s2, w = flow[m, _C], flow[m, _C2], flow[m, _S2], flow[m, _W]
                    # each row's forcing is its entry's coefficient × the row's column at this TR;
                    # rows 0-7: k_c2, k_s2, k_w, k_0, x_f, x_s, k_b, b2
                    za0, zb0 = _propagate(e11, e12, e21, e22, za0, zb0, c2 * g11a, c2 * g11b)
                    za1, zb1 = _propagate(e11, e12, e21, e22, za1, zb1, s2 * g11a, s2 * g11b)
                    za2, zb2 = _propagate(e11, e12, e21, e22, za2, zb2, w * g22a, w * g22b)
                    za3, zb3 = _propagate(e11, e12, e21, e22, za3, zb3, -g22a, -g22b)
                    za4, zb4 = _propagate(e11, e12, e21, e22, za4, zb4, c * g12a, c * g12b)
                    za5, zb5 = _propagate(e11, e12, e21, e22, za5, zb5, c * g21a, c * g21b)
                    za6, zb6 = _propagate(e11, e12, e21, e22, za6, zb6, c * n1a, c * n1b)
                    za7, zb7 = _propagate(e11, e12, e21, e22, za7, zb7, n2a, n2b)
                    # beta: no forcing before the inversion, so its tangent starts there
                    if n == T - 1 and half == 1:
                        za8, zb8 = _propagate(e11, e12, e21, e22, za8, zb8, 0.0, 0.0)
                    if b1_free:
                        # ∂/∂B1 of the entries through α = B1·θ and w = B1²·w0
                        sn, th = flow[m, _SN], theta[m]
                        dc = -sn * th
                        d11 = dbl_c2 * c * sn * th
                        d22 = 2.0 * b1v * w0[m] * k_w
                        fa9 = d11 * g11a + d22 * g22a + dc * (x_f * g12a + x_s * g21a + k_b * n1a)
                        fb9 = d11 * g11b + d22 * g22b + dc * (x_f * g12b + x_s * g21b + k_b * n1b)
                        za9, zb9 = _propagate(e11, e12, e21, e22, za9, zb9, fa9, fb9)
                    ya, yb = ev1 + yi1, ev2 + yi2
                    if half == 0 and n == T - 1:     # the inversion, and ∂(beta·z_s)/∂beta
                        bi = beta[i]
                        za0, za1, za2, za3, za4, za5, za6, za7, za8, za9 = (
                            -za0, -za1, -za2, -za3, -za4, -za5, -za6, -za7, -za8, -za9)
                        zb0, zb1, zb2, zb3, zb4 = bi * zb0, bi * zb1, bi * zb2, bi * zb3, bi * zb4
                        zb5, zb6, zb7, zb9 = bi * zb5, bi * zb6, bi * zb7, bi * zb9
                        zb8 = bi * zb8 + yb
                        ya, yb = -ya, bi * yb
                if n + 1 < T:
                    zrow[0, n + 1], zrow[1, n + 1], zrow[2, n + 1] = za0, za1, za2
                    zrow[3, n + 1], zrow[4, n + 1], zrow[5, n + 1] = za3, za4, za5
                    zrow[6, n + 1], zrow[7, n + 1], zrow[9, n + 1] = za6, za7, za9
            # ---- 4. periodic tangent starts, and the chain to the parameters -----------------
            # Tangent q at mid-TR n = zrow[q, n] + l0[n]·t1_q + l1[n]·t2_q, with
            # (t1, t2)_q = (I − K)⁻¹ ż_q at the cycle end; the parameters' columns are
            # Σ_q chain[q, p] × that, times sin(B1·θ) (and B1 moves sin(B1·θ) itself).
            end_a = (za0, za1, za2, za3, za4, za5, za6, za7, za8, za9)
            end_b = (zb0, zb1, zb2, zb3, zb4, zb5, zb6, zb7, zb8, zb9)
            for p in range(n_par):
                T1 = 0.0
                T2 = 0.0
                for q in range(n_dir):
                    cq = chain[i, q, p]
                    T1 += cq * ((m22 * end_a[q] - m12 * end_b[q]) * inv_m)
                    T2 += cq * ((m11 * end_b[q] - m21 * end_a[q]) * inv_m)
                col = cols[p]
                for n in range(T):
                    col[n] = l0[n] * T1 + l1[n] * T2
                for q in range(n_dir):
                    if q == 8:                               # a zero row (see zrow)
                        continue
                    cq = chain[i, q, p]
                    for n in range(T):
                        col[n] += cq * zrow[q, n]
                if b1_free:
                    cb = chain[i, 9, p]
                    for n in range(T):
                        col[n] = col[n] * flow[n, _SN] + r_f[n] * flow[n, _C] * theta[n] * cb
                else:
                    for n in range(T):
                        col[n] *= flow[n, _SN]
                if want_jac:
                    for n in range(T):
                        jac[p, i, n] = col[n]
            if want_gram:
                # Gram matrix of (∂f/∂θ_1 .. ∂f/∂θ_P, f)
                _gram(cols, gram[i])


def _half_tr_map_python(flow, m):  # pragma: no cover
    """``(E11, E12, E21, E22, y∞1, y∞2)`` of TR m: half a TR maps y to E (y − y∞) + y∞.
    Step n of a march (mid-TR n to mid-TR n+1) is TR n, then TR n+1."""
    return (flow[m, _E11], flow[m, _E12], flow[m, _E21], flow[m, _E22],
            flow[m, _YI1], flow[m, _YI2])


def _propagate_python(e11, e12, e21, e22, za, zb, fa, fb):  # pragma: no cover
    """``E z + f`` for one tangent ``z = (za, zb)``."""
    return e11 * za + e12 * zb + fa, e21 * za + e22 * zb + fb


def _poly_python(c, x):  # pragma: no cover
    """Σ_k c[k]·x^k for the 12 coefficients c (Horner, written out so that the compiled code
    indexes the constant tuple with constants)."""
    return c[0] + x * (c[1] + x * (c[2] + x * (c[3] + x * (c[4] + x * (c[5] + x * (
        c[6] + x * (c[7] + x * (c[8] + x * (c[9] + x * (c[10] + x * c[11]))))))))))


def _gram_python(cols, out):  # pragma: no cover
    """``out = cols · colsᵀ`` for cols [K, T] (dot products; compiled with reassociation so
    that the sums vectorize)."""
    k, T = cols.shape
    for a in range(k):
        for b in range(a, k):
            acc = 0.0
            for n in range(T):
                acc += cols[a, n] * cols[b, n]
            out[a, b] = acc
            out[b, a] = acc


def _load():
    """The compiled kernel (compiling or loading it on the first call)."""
    global numba
    if _compiled is None:
        numba = _numba.module()
        try:
            _compile(cache=True)
        except RuntimeError:        # no writable cache directory: compile in every process
            _compile(cache=False)
    return _compiled


def _compile(cache: bool) -> None:
    global _gram, _half_tr_map, _propagate, _poly, _compiled
    _half_tr_map = numba.njit(cache=cache, nogil=True, inline="always")(_half_tr_map_python)
    _propagate = numba.njit(cache=cache, nogil=True, inline="always")(_propagate_python)
    _poly = numba.njit(cache=cache, nogil=True, inline="always")(_poly_python)
    _gram = numba.njit(cache=cache, nogil=True, fastmath={"reassoc", "contract"})(_gram_python)
    # Reassociation lets LLVM reorder and vectorize the arithmetic (~15 % faster); it moves
    # results by round-off only (the tests hold the kernel to the tensor code at 1e-13 / 1e-10).
    _compiled = numba.njit(parallel=True, cache=cache, nogil=True,
                           fastmath={"reassoc", "contract"})(_signal_and_jacobian)


def signal_and_jacobian(rows, beta, B1, chain, theta, w0, b1_free, signal=None, jac=None,
                        gram=None) -> None:
    """Run the kernel (arguments as :func:`_signal_and_jacobian`; each output is filled when
    given) with as many threads as PyTorch uses (numba keeps its own pool). The thread count
    is set for this call only and restored afterwards."""
    if rows.shape[0] == 0:
        return
    kernel = _load()
    empty2, empty3 = np.empty((1, 1)), np.empty((1, 1, 1))
    with _numba.threads():
        kernel(rows, beta, B1, chain, theta, w0, b1_free,
               empty2 if signal is None else signal, signal is not None,
               empty3 if jac is None else jac, jac is not None,
               empty3 if gram is None else gram, gram is not None)


# Whether the kernel can be used (numba installed and importable); else the PyTorch code runs.
available = _numba.available
