"""Two-pool magnetization transfer in the hybrid state of free precession (DESIGN §4.1).

Free pool (fraction 1 − m0s) is tracked by its radius ``r_f`` along the instantaneous
steady-state direction, the semi-solid pool by its longitudinal ``z_s``. Within one TR the flip
angle θ and pulse duration TRF are constant, so ``y = (r_f, z_s)`` obeys an affine 2×2 ODE
``dy/dt = A y + b``:

    A = [[-(c²/T1f + s²/T2f + c²·Rx·m0s),  Rx·(1−m0s)·c            ],
         [ Rx·m0s·c,                       -(1/T1s + Rx·(1−m0s) + W)]]
    b = [(1−m0s)·c/T1f,  m0s/T1s],   c = cos(B1·θ), s = sin(B1·θ)
    W = k_RF · (B1·θ)² · T2s / (TRF · TR)

Its flow over a time h is ``y(h) = E (y(0) − y∞) + y∞`` with ``E = exp(A h)`` and
``y∞ = −A⁻¹ b``. The off-diagonal product ``Rx²·m0s·(1−m0s)·c²`` is ≥ 0, so A has real
eigenvalues and ``E = e^{m h} (cosh(q h) I + sinh(q h)/q (A − m I))`` with ``m = tr(A)/2``,
``q² = ((A11 − A22)/2)² + A12·A21`` — a closed form instead of a generic matrix exponential.
``det A > 0`` always (both pools relax), so ``y∞`` exists.

Time convention: θ_n, TRF_n hold on [n·TR, (n+1)·TR); sample n is
``M0 · r_f((n + ½)·TR) · sin(B1·θ_n)`` (echo at TR/2). A cycle is the whole train; at its start
an inversion pulse of duration T_inv maps ``r_f → −r_f`` and
``z_s → z_s · (1 − π²·T2s/T_inv)``.

Periodic steady state, solved exactly: the state at mid-TR n is affine in the state ``z₀`` at
mid-TR 0, ``y_n = L_n z₀ + v_n``; one pass over the train gives every ``(L_n, v_n)``, the cycle
closes through the inversion, and ``z₀`` solves a 2×2 linear system. No cycles are iterated.
"""

from __future__ import annotations

import math

import torch

from .. import sequences as seqs
from .base import ParameterSpec, SignalModel


def _expm_affine_2x2(a11, a12, a21, a22, h):
    """exp(A h) for batched real 2×2 A with real eigenvalues (q² ≥ 0); returns 4 entries.

    Near q² = 0 the closed form divides by q, so cosh and sinh(q h)/q use their Taylor
    series in x = q² h² there; both branches are evaluated on safe inputs so forward-mode
    derivatives stay finite.
    """
    m = 0.5 * (a11 + a22)
    half_diff = 0.5 * (a11 - a22)
    q2 = half_diff * half_diff + a12 * a21
    x = q2 * (h * h)
    small = x < 1e-4
    x_safe = torch.where(small, torch.ones_like(x), x)
    r = torch.sqrt(x_safe)  # = q h
    cosh_big = torch.cosh(r)
    sinhc_big = torch.sinh(r) / r  # = sinh(q h) / (q h)
    x_small = torch.where(small, x, torch.zeros_like(x))
    cosh_small = 1 + x_small / 2 + x_small * x_small / 24 + x_small ** 3 / 720
    sinhc_small = 1 + x_small / 6 + x_small * x_small / 120 + x_small ** 3 / 5040
    C = torch.where(small, cosh_small, cosh_big)
    S = torch.where(small, sinhc_small, sinhc_big) * h  # = sinh(q h) / q
    emh = torch.exp(m * h)
    e11 = emh * (C + S * half_diff)
    e22 = emh * (C - S * half_diff)
    e12 = emh * S * a12
    e21 = emh * S * a21
    return e11, e12, e21, e22


class MTHybridState(SignalModel):
    name = "mt_hybrid_state"
    sequence_kind = "mt"
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
                      "relative flip-angle scale (transmit field)"),
    )
    default_fixed = {"B1": 1.0}

    @classmethod
    def default_sequence(cls) -> seqs.MTSequence:
        return seqs.default_mt_sequence()

    def _sequence_tensors(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seq = self.sequence
        theta = torch.as_tensor(seq.theta, dtype=like.dtype, device=like.device)
        trf = torch.as_tensor(seq.TRF, dtype=like.dtype, device=like.device)
        return theta, trf

    def _simulate(self, p: dict[str, torch.Tensor]) -> torch.Tensor:
        seq = self.sequence
        m0s, T1f, T2f, Rx, T1s, T2s, B1 = (p[k][:, None] for k in
                                           ("m0s", "T1f", "T2f", "Rx", "T1s", "T2s", "B1"))
        theta_nom, trf = self._sequence_tensors(m0s)
        alpha = B1 * theta_nom                              # [N, T] actual flip angle
        c, s = torch.cos(alpha), torch.sin(alpha)
        W = seq.k_RF * alpha * alpha * T2s / (trf * seq.TR)
        a11 = -(c * c / T1f + s * s / T2f + c * c * Rx * m0s)
        a12 = Rx * (1 - m0s) * c
        a21 = Rx * m0s * c
        a22 = -(1 / T1s + Rx * (1 - m0s) + W)
        b1 = (1 - m0s) * c / T1f
        b2 = (m0s / T1s).expand_as(a11)
        det = a11 * a22 - a12 * a21
        yinf1 = -(a22 * b1 - a12 * b2) / det
        yinf2 = -(a11 * b2 - a21 * b1) / det

        # Half-TR map of TR n: y -> E y + g, with g = (I - E) y_inf.
        e11, e12, e21, e22 = _expm_affine_2x2(a11, a12, a21, a22, 0.5 * seq.TR)
        g1 = yinf1 - (e11 * yinf1 + e12 * yinf2)
        g2 = yinf2 - (e21 * yinf1 + e22 * yinf2)
        E = torch.stack((torch.stack((e11, e12), -1), torch.stack((e21, e22), -1)), -2)
        g = torch.stack((g1, g2), -1)[..., None]            # [N, T, 2, 1]

        # Mid-TR n -> mid-TR n+1 is the second half of TR n then the first half of TR n+1.
        E_next, g_next = E[:, 1:], g[:, 1:]
        F = E_next @ E[:, :-1]                               # [N, T-1, 2, 2]
        f = E_next @ g[:, :-1] + g_next                      # [N, T-1, 2, 1]

        N, T = alpha.shape
        L = torch.eye(2, dtype=alpha.dtype, device=alpha.device).expand(N, 2, 2)
        v = torch.zeros(N, 2, 1, dtype=alpha.dtype, device=alpha.device)
        Ls, vs = [L], [v]
        for n in range(T - 1):
            v = torch.baddbmm(f[:, n], F[:, n], v)
            L = torch.bmm(F[:, n], L)
            Ls.append(L)
            vs.append(v)
        L_all = torch.stack(Ls, 1)                           # [N, T, 2, 2]
        v_all = torch.stack(vs, 1)                           # [N, T, 2, 1]

        # Close the cycle: mid-TR T-1 -> end of the train -> inversion -> mid-TR 0.
        beta = 1 - math.pi ** 2 * T2s[:, 0] / seq.T_inv
        inv = torch.stack((-torch.ones_like(beta), beta), -1)[..., None]   # diag(B) as [N,2,1]
        E_last, g_last, E_first, g_first = E[:, -1], g[:, -1], E[:, 0], g[:, 0]
        K = E_first @ (inv * E_last)                          # E_0 · B · E_{T-1}
        k = E_first @ (inv * g_last) + g_first
        # z0 = K (L z0 + v) + k  <=>  (I - K L) z0 = K v + k
        KL = K @ L_all[:, -1]
        rhs = K @ v_all[:, -1] + k
        m11, m12 = 1 - KL[:, 0, 0], -KL[:, 0, 1]
        m21, m22 = -KL[:, 1, 0], 1 - KL[:, 1, 1]
        dm = m11 * m22 - m12 * m21
        z1 = (m22 * rhs[:, 0, 0] - m12 * rhs[:, 1, 0]) / dm
        z2 = (m11 * rhs[:, 1, 0] - m21 * rhs[:, 0, 0]) / dm

        r_f = L_all[:, :, 0, 0] * z1[:, None] + L_all[:, :, 0, 1] * z2[:, None] + v_all[:, :, 0, 0]
        signal = r_f * s
        return torch.complex(signal, torch.zeros_like(signal))
