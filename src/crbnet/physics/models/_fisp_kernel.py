"""Compiled FISP-MRF EPG recursion with forward-mode tangents and the Gram matrix (CPU).

The same recursion as :func:`crbnet.physics.models.fisp_mrf.epg_signal` — the physics is in that
module's docstring — written as loops over voxels and EPG orders, so that one voxel's states
and their tangents stay in cache and the order loop vectorizes. numba compiles it on first use
(cached on disk) and runs blocks of voxels in parallel threads; the dtype of the arrays passed
in (float32 or float64) is the arithmetic's.

Storage without shifts. The dephasing moves every ``F⁺_k`` to ``k + 1`` and every ``F⁻_k`` to
``k − 1`` each TR; instead of moving data, ``F⁺_k`` of TR n is kept at index ``T − n + k`` of
one array and ``F⁻_k`` at ``n + k`` of another, which is where the dephased state lands without
moving. Only the new ``F⁺₀ = conj(F⁻₀)`` is written. ``Z_k`` stays at index k.

Only live orders are visited: at the start of TR n (0-based) orders above n are still empty,
and an order k > T − 1 − n can no longer return to k = 0 before the last echo (each dephasing
lowers an order by at most one), so TR n updates orders ``0 … min(n, T − 1 − n, K − 1)``; the
result is the same as updating all K but costs about T²/4 order updates instead of T·K.

Tangents: ``∂/∂T1`` enters through E1 and the inversion recovery, ``∂/∂T2`` through E2 (and the
decay to the echo), ``∂/∂B1`` through the RF rotation; each is carried through the same linear
RF map and relaxation as the state, with the derivative of the coefficients times the state as
forcing. The Gram matrix of ``(∂s/∂θ_1 … ∂s/∂θ_P, s)`` (s: the imaginary part of the signal)
is summed as the echoes come out, so the Jacobian is never stored.
"""

from __future__ import annotations

import math

import numpy as np

from crbnet.physics.models import _numba

# Voxels per parallel work item: scratch is allocated once per block.
_BLOCK = 16


def _epg_kernel(T1, T2, B1, b1_free, flip, tr, TE, TI, n_states, dirs, signal, want_signal,
                jac, want_jac, gram, want_gram):  # pragma: no cover - compiled
    """Fill ``signal`` [N, T] (imaginary part of ``F⁺₀`` at each echo) if ``want_signal``,
    ``jac`` [P, N, T] (its derivatives along the estimated parameters) if ``want_jac`` and
    ``gram`` [N, P+1, P+1] (float64; Gram matrix of the Jacobian's columns and the signal) if
    ``want_gram``.

    ``T1``, ``T2``, ``B1`` [N] (s, s, —), ``flip`` [T] (rad), ``tr`` [T] (s), all of one float
    dtype; ``TE``, ``TI`` (s) numbers; ``n_states`` EPG orders kept; ``dirs`` [3] int: 1 where
    T1, T2, B1 (in that order) are estimated — the Jacobian's columns follow that order. If
    ``b1_free`` is False, B1 must be the same in every voxel.
    """
    n_vox = T1.shape[0]
    T = flip.shape[0]
    want_t1, want_t2, want_b1 = dirs[0] != 0, dirs[1] != 0, dirs[2] != 0
    tangents = want_jac or want_gram
    n_par = dirs[0] + dirs[1] + dirs[2]
    col_t1 = 0
    col_t2 = dirs[0]
    col_b1 = dirs[0] + dirs[1]
    # RF coefficients shared by all voxels when B1 is fixed.
    rf_fixed = np.empty((T, 5), T1.dtype)
    for n in range(T):
        a = B1[0] * flip[n]
        ca = math.cos(a)
        sa = math.sin(a)
        rf_fixed[n, 0] = 0.5 * (1.0 + ca)           # cos²(α/2)
        rf_fixed[n, 1] = 0.5 * (1.0 - ca)           # sin²(α/2)
        rf_fixed[n, 2] = sa
        rf_fixed[n, 3] = 0.5 * sa
        rf_fixed[n, 4] = ca
    n_blocks = (n_vox + _BLOCK - 1) // _BLOCK
    for ib in numba.prange(n_blocks):
        # state, then the T1, T2 and B1 tangents: F⁺ and F⁻ (shift-free layout), Z
        P = np.empty((4, T + 1), T1.dtype)
        M = np.empty((4, T + 1), T1.dtype)
        Z = np.empty((4, n_states + 1), T1.dtype)
        c = np.empty(16, T1.dtype)                   # per-TR coefficients in the arrays' dtype
        vals = np.empty(4)                           # this echo's Jacobian row and signal
        # 1-D rows: contiguous arrays whose loops LLVM vectorizes
        P0, P1, P2, P3 = P[0], P[1], P[2], P[3]
        M0, M1, M2, M3 = M[0], M[1], M[2], M[3]
        Z0, Z1, Z2, Z3 = Z[0], Z[1], Z[2], Z[3]
        for i in range(ib * _BLOCK, min(n_vox, (ib + 1) * _BLOCK)):
            t1, t2, b1v = T1[i], T2[i], B1[i]
            P[:] = 0
            M[:] = 0
            Z[:] = 0
            e_ti = math.exp(-TI / t1)
            Z[0, 0] = 1.0 - 2.0 * e_ti
            Z[1, 0] = -2.0 * e_ti * TI / (t1 * t1)
            e2_te = math.exp(-TE / t2)
            de2_te = e2_te * TE / (t2 * t2)
            if want_gram:
                for a in range(n_par + 1):
                    for b in range(n_par + 1):
                        gram[i, a, b] = 0.0
            for n in range(T):
                e1 = math.exp(-tr[n] / t1)
                e2 = math.exp(-tr[n] / t2)
                c[5] = e1
                c[6] = e2
                c[7] = e1 * tr[n] / (t1 * t1)        # ∂E1/∂T1
                c[8] = e2 * tr[n] / (t2 * t2)        # ∂E2/∂T2
                if b1_free:
                    a = b1v * flip[n]
                    ca = math.cos(a)
                    sa = math.sin(a)
                    c[0] = 0.5 * (1.0 + ca)
                    c[1] = 0.5 * (1.0 - ca)
                    c[2] = sa
                    c[3] = 0.5 * sa
                    c[4] = ca
                    # their B1 derivatives (α = B1·flip)
                    c[9] = -0.5 * sa * flip[n]
                    c[10] = 0.5 * sa * flip[n]
                    c[11] = ca * flip[n]
                    c[12] = 0.5 * ca * flip[n]
                    c[13] = -sa * flip[n]
                else:
                    for j in range(5):
                        c[j] = rf_fixed[n, j]
                cos2, sin2, sin_a, half_sin, cos_a = c[0], c[1], c[2], c[3], c[4]
                E1, E2, dE1, dE2 = c[5], c[6], c[7], c[8]
                dcos2, dsin2, dsin_a, dhalf_sin, dcos_a = c[9], c[10], c[11], c[12], c[13]
                m = min(n, T - 1 - n, n_states - 1)
                ip = T - n
                im = n
                # the echo: F⁺₀ right after the RF, decayed for TE
                f0 = cos2 * P[0, ip] + sin2 * M[0, im] - sin_a * Z[0, 0]
                vals[n_par] = f0 * e2_te
                if tangents:
                    if want_t1:
                        g = cos2 * P[1, ip] + sin2 * M[1, im] - sin_a * Z[1, 0]
                        vals[col_t1] = g * e2_te
                    if want_t2:
                        g = cos2 * P[2, ip] + sin2 * M[2, im] - sin_a * Z[2, 0]
                        vals[col_t2] = g * e2_te + f0 * de2_te
                    if want_b1:
                        g = (cos2 * P[3, ip] + sin2 * M[3, im] - sin_a * Z[3, 0]
                             + dcos2 * P[0, ip] + dsin2 * M[0, im] - dsin_a * Z[0, 0])
                        vals[col_b1] = g * e2_te
                    if want_jac:
                        for a in range(n_par):
                            jac[a, i, n] = vals[a]
                    if want_gram:
                        for a in range(n_par + 1):
                            for b in range(a, n_par + 1):
                                gram[i, a, b] += vals[a] * vals[b]
                if want_signal:
                    signal[i, n] = vals[n_par]
                # RF about x and relaxation over the TR, for every live order. The tangents go
                # first: they need the state before its update.
                # Views of the live orders: loops over whole views vectorize.
                p0, q0, z0 = P0[ip:ip + m + 1], M0[im:im + m + 1], Z0[:m + 1]
                if tangents:
                    if want_t1:
                        p1, q1, z1 = P1[ip:ip + m + 1], M1[im:im + m + 1], Z1[:m + 1]
                        for k in range(p0.shape[0]):
                            p, q, z = p0[k], q0[k], z0[k]
                            zr = half_sin * (p - q) + cos_a * z
                            a1, b1, c1 = p1[k], q1[k], z1[k]
                            fr1 = cos2 * a1 + sin2 * b1 - sin_a * c1
                            p1[k] = fr1 * E2
                            q1[k] = (a1 + b1 - fr1) * E2
                            z1[k] = (half_sin * (a1 - b1) + cos_a * c1) * E1 + zr * dE1
                        Z1[0] -= dE1                       # ∂(1 − E1)/∂T1 into Z₀
                    if want_t2:
                        p2, q2, z2 = P2[ip:ip + m + 1], M2[im:im + m + 1], Z2[:m + 1]
                        for k in range(p0.shape[0]):
                            p, q, z = p0[k], q0[k], z0[k]
                            fr = cos2 * p + sin2 * q - sin_a * z
                            a2, b2, c2 = p2[k], q2[k], z2[k]
                            fr2 = cos2 * a2 + sin2 * b2 - sin_a * c2
                            p2[k] = fr2 * E2 + fr * dE2
                            q2[k] = (a2 + b2 - fr2) * E2 + (p + q - fr) * dE2
                            z2[k] = (half_sin * (a2 - b2) + cos_a * c2) * E1
                    if want_b1:
                        p3, q3, z3 = P3[ip:ip + m + 1], M3[im:im + m + 1], Z3[:m + 1]
                        for k in range(p0.shape[0]):
                            p, q, z = p0[k], q0[k], z0[k]
                            a3, b3, c3 = p3[k], q3[k], z3[k]
                            fr3 = (cos2 * a3 + sin2 * b3 - sin_a * c3
                                   + dcos2 * p + dsin2 * q - dsin_a * z)
                            p3[k] = fr3 * E2
                            q3[k] = (a3 + b3 - fr3) * E2
                            z3[k] = (half_sin * (a3 - b3) + cos_a * c3
                                     + dhalf_sin * (p - q) + dcos_a * z) * E1
                for k in range(p0.shape[0]):
                    p, q, z = p0[k], q0[k], z0[k]
                    fr = cos2 * p + sin2 * q - sin_a * z
                    p0[k] = fr * E2
                    q0[k] = (p + q - fr) * E2
                    z0[k] = (half_sin * (p - q) + cos_a * z) * E1
                Z[0, 0] += 1.0 - E1                          # recovery of Z₀
                # dephasing: the new F⁺₀ is conj(F⁻₀), F⁻₀ being the old F⁻₁ (index n + 1)
                for s in range(4):
                    P[s, ip - 1] = -M[s, im + 1]
            if want_gram:
                for a in range(n_par + 1):
                    for b in range(a):
                        gram[i, a, b] = gram[i, b, a]


numba = None
_compiled = None


def _load():
    """The compiled kernel (compiled, or loaded from numba's disk cache, on the first call)."""
    global numba, _compiled
    if _compiled is None:
        numba = _numba.module()
        _compiled = _numba.compile_parallel(_epg_kernel)
    return _compiled


def run(T1: np.ndarray, T2: np.ndarray, B1: np.ndarray, b1_free: bool, flip: np.ndarray,
        tr: np.ndarray, TE: float, TI: float, n_states: int, dirs: np.ndarray,
        signal: np.ndarray | None = None, jac: np.ndarray | None = None,
        gram: np.ndarray | None = None) -> None:
    """Run the kernel (arguments as :func:`_epg_kernel`; each output is filled when given)
    with as many threads as PyTorch uses."""
    if T1.shape[0] == 0:
        return
    kernel = _load()
    dtype = T1.dtype
    empty2, empty3 = np.empty((1, 1), dtype), np.empty((1, 1, 1), dtype)
    with _numba.threads():
        kernel(T1, T2, B1, b1_free, flip, tr, float(TE), float(TI), int(n_states), dirs,
               empty2 if signal is None else signal, signal is not None,
               empty3 if jac is None else jac, jac is not None,
               np.empty((1, 1, 1)) if gram is None else gram, gram is not None)

