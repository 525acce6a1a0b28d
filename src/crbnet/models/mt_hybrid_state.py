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
  are ``[1, N]`` rows and sequence quantities ``[T, 1]`` columns (cached per device, dtype and
  B1), so every entry of ``A h`` is a sum of outer products, each with a one-product
  forward-mode tangent. Large batches are simulated in chunks of ``chunk_size`` voxels so that
  temporaries stay cache-sized.
- 2×2 maps are stacked tensors ``L [2, 2, ...]``, ``v [2, ...]``; composing them is four
  broadcast products (batched matmul on tiny matrices is slow).
- The prefix maps come from a two-level scan: sequentially over the ~√T positions within
  blocks of consecutive steps, vectorized over the blocks, then a logarithmic scan over the
  block totals: ~√T + log₂√T sequential steps instead of T.
- Values and derivatives take different routes. The steady state is computed on *detached*
  maps (no derivative bookkeeping in the 2×2 compositions). When autodiff follows the inputs
  (the CRB's forward-mode Jacobian, reverse mode, dual tensors), the state is also marched
  through each block with the differentiable maps from the exact block-start values; an
  affine map differs from its value at the exact start only through the start, so adding the
  detached prefix times (u − u0), where u (equal to u0 in value) solves the same periodic
  problem with the marched block maps, gives exact first derivatives at a quarter of the cost of
  differentiating the compositions. Second derivatives through the steady state are not exact
  (nothing in crbnet takes them).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.autograd.forward_ad as fwAD

from .. import sequences as seqs
from .base import ParameterSpec, SignalModel

# Below this x = r², sinh(r)/r comes from its Taylor series 1 + x/6 + x²/120 (truncation error
# < 1e-21): the quotient is exact in value, but its forward-mode derivative cancels as r → 0
# (relative error ~ 3·eps/x, so ≤ 1e-9 at the switch, on a term that is multiplied by |M| ≤ √x).
_TAYLOR_X = 1e-6
# cosh(r) and sinh(r) are evaluated at min(r, _R_CLAMP) and the excess goes into the exponential
# prefactor: exact to e^{-2·_R_CLAMP} and it never overflows (e^μ cosh r ≤ 1 since μ + r ≤ 0).
_R_CLAMP = 20.0

# An affine map y -> L y + v of R², batched: L is [2, 2, ...] (row, column, batch...), v [2, ...].
Affine = tuple[torch.Tensor, torch.Tensor]


def _exp_traceless(mu: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(e^μ cosh r, e^μ sinh(r)/r)`` with ``r = √x``, x ≥ 0: the scalars of ``exp(μ I + M)``.

    Both are analytic in x; ``x + tiny`` keeps √ finite at x = 0 so that the derivative of
    cosh(√x) (a product, no cancellation) stays exact there.
    """
    r = torch.sqrt(x + torch.finfo(x.dtype).tiny)
    r_c = r.clamp(max=_R_CLAMP)
    scale = torch.exp(mu + (r - r_c))
    # The series is evaluated everywhere (x stays far from overflow) and used only where small.
    sinhc_taylor = 1 + x * (1 / 6 + x * (1 / 120))
    sinhc = torch.where(x < _TAYLOR_X, sinhc_taylor, torch.sinh(r_c) / r)
    return scale * torch.cosh(r_c), scale * sinhc


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


def _tracks_derivatives(t: torch.Tensor) -> bool:
    """Whether autodiff follows ``t``: reverse mode, a torch.func transform, or a dual tensor."""
    is_wrapped = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", lambda _: True)
    return t.requires_grad or is_wrapped(t) or fwAD.unpack_dual(t).tangent is not None


def _block_size(n: int) -> int:
    """Steps per block of the two-level scan: the divisor of n closest to √n from below (1 when
    n is prime: then the logarithmic scan does all the work)."""
    return max(b for b in range(1, math.isqrt(n) + 1) if n % b == 0)


def _cycle_steps(half: Affine):
    """The T steps of one cycle, by position j in the block, vectorized over the blocks.

    ``half`` holds per-TR quantities with batch dims [T, N] (a half-TR map and its offset or
    centre). Step n maps mid-TR n to mid-TR n+1: the second half of TR n, then the first half of
    TR n+1. With ``block`` dividing T the steps form ``nb = T / block`` blocks; this yields, for
    each j, the TR quantities ``(first, second)`` of step ``b·block + j`` of every block b (batch
    dims [nb, N]). For the last block's last step, ``second`` is TR 0 of the next cycle; the
    inversion between them is left to the caller (see :func:`_inversion_after_last`).
    """
    E, o = half
    T, n = o.shape[-2:]
    block = _block_size(T)
    E, o = E.reshape(2, 2, T // block, block, n), o.reshape(2, T // block, block, n)
    for j in range(block):
        if j < block - 1:
            second = (E[..., j + 1, :], o[..., j + 1, :])
        else:                                               # the next block's first TR
            second = (torch.cat((E[..., 1:, 0, :], E[..., :1, 0, :]), -2),
                      torch.cat((o[:, 1:, 0], o[:, :1, 0]), -2))
        yield (E[..., j, :], o[..., j, :]), second


def _inversion_after_last(flip: torch.Tensor, n_blocks: int) -> torch.Tensor:
    """Diagonal [2, nb, N] applied after the first half of the blocks' last steps: the
    inversion (``flip``, [2, N]) for the last block, which ends the cycle; 1 for the others."""
    return torch.cat((torch.ones_like(flip)[:, None].expand(2, n_blocks - 1, -1), flip[:, None]), 1)


def _scan_cycle(half: Affine, flip: torch.Tensor
                ) -> tuple[tuple[torch.Tensor, torch.Tensor], Affine]:
    """Prefix compositions of the steps of one cycle within each block; ``half`` holds the
    half-TR maps ``(E_n, g_n)`` of ``y -> E y + g``.

    Returns the first rows of the within-block prefixes — linear part [2, nb, block, N] and
    offset [nb, block, N] — and the block totals (batch dims [nb, N]).
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


def _steady_state_r_f(E: torch.Tensor, y_inf: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """r_f at every mid-TR of the periodic steady state, [T, N].

    The cycle is T steps mid-TR n -> mid-TR n+1, the last one through the inversion; its
    prefix maps give every mid-TR state as an affine function of the state z0 at mid-TR 0, and
    z0 solves the periodic condition.
    """
    # Values: prefix compositions on detached maps (no derivative bookkeeping there).
    E0, y_inf0 = E.detach(), y_inf.detach()
    g0 = y_inf0 - _linear(E0, y_inf0)                      # y -> E y + g, g = (I − E) y∞
    (rows_L, rows_v), block_totals = _scan_cycle((E0, g0), flip.detach())
    to_block_end = _scan_log(block_totals)                 # mid-TR 0 -> end of block b
    z0 = _periodic_start(to_block_end)
    u0 = _block_starts(to_block_end, z0)[:, :, None]       # [2, nb, 1, N]
    if not _tracks_derivatives(E):
        r_f = rows_L[0] * u0[0] + rows_L[1] * u0[1] + rows_v    # mid-TR 1, 2, ..., T-1, 0
    else:
        # Derivatives, exact to first order in any autodiff mode: march the state through each
        # block with the differentiable maps, from the exact block-start values u0. The true
        # trajectory differs from that march ŷ only through its start u (equal to u0 in value):
        # y = ŷ + L0 (u − u0), L0 the detached within-block prefix; and u follows from the
        # block maps u ↦ ê + L0 (u − u0) by the same periodic solve.
        march_rows, block_end = _march((E, y_inf), flip, u0[:, :, 0])
        local = (block_totals[0], block_end - _linear(block_totals[0], u0[:, :, 0]))
        to_block_end = _scan_log(local)
        z0 = _periodic_start(to_block_end)
        delta = _block_starts(to_block_end, z0)[:, :, None] - u0   # value 0
        r_f = march_rows + rows_L[0] * delta[0] + rows_L[1] * delta[1]
    return torch.cat((z0[:1], r_f.reshape(-1, r_f.shape[-1])[:-1]))


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
    # Voxels per pass of :meth:`_simulate` and per chunk in crbnet.crb: the [T, N] temporaries
    # (×(P+1) under forward-mode autodiff) must stay cache-sized; larger chunks are several times
    # slower on CPU. Results do not depend on either.
    chunk_size = 512
    crb_chunk_size = 512

    def __init__(self, sequence: seqs.MTSequence | None = None, fixed=None) -> None:
        super().__init__(sequence, fixed)
        self._cache: dict[tuple, tuple] = {}

    @classmethod
    def default_sequence(cls) -> seqs.MTSequence:
        return seqs.default_mt_sequence()

    def _sequence_columns(self, dtype: torch.dtype, device: torch.device,
                          B1: float | None) -> tuple[torch.Tensor, ...]:
        """Sequence-only quantities as [T, 1] columns, cached per (sequence, dtype, device, B1).

        With B1 fixed: ``(cos α, sin α, cos² α, sin² α, w, w·cos α)`` for α = B1·θ and
        w = α²/TRF. With B1 estimated (``B1=None``): ``(θ, θ²/TRF)``; the rest is per voxel.
        """
        seq = self.sequence
        key = (id(seq), dtype, device, B1)
        entry = self._cache.get(key)
        if entry is not None and entry[0] is seq:           # (a new object may reuse an id)
            return entry[1]
        theta = seq.theta if B1 is None else B1 * seq.theta
        w = theta * theta / seq.TRF
        cols = [theta, w]
        if B1 is not None:
            c, s = np.cos(theta), np.sin(theta)
            cols = [c, s, c * c, s * s, w, c * w]
        # Made outside any inference_mode so that autograd can use the cache later on.
        with torch.inference_mode(False):
            tensors = tuple(torch.as_tensor(col[:, None], dtype=dtype, device=device)
                            for col in cols)
        self._cache = {key: (seq, tensors)}                 # a model runs on one device at a time
        return tensors

    def _simulate(self, p: dict[str, torch.Tensor]) -> torch.Tensor:
        n = p["m0s"].shape[0]
        if n <= self.chunk_size:
            return self._simulate_chunk(p)
        return torch.cat([self._simulate_chunk({k: v[i:i + self.chunk_size] for k, v in p.items()})
                          for i in range(0, n, self.chunk_size)])

    def _simulate_chunk(self, p: dict[str, torch.Tensor]) -> torch.Tensor:
        E, y_inf, flip, sin_alpha = self._half_tr_maps(p)
        r_f = _steady_state_r_f(E, y_inf, flip)           # [T, N], mid-TR 0 .. T-1
        signal = (r_f * sin_alpha).T                       # [N, T]
        return torch.complex(signal, torch.zeros_like(signal))

    def _half_tr_maps(self, p: dict[str, torch.Tensor]):
        """The map over half a TR, ``y -> E (y − y∞) + y∞``, of every TR and voxel: E
        [2, 2, T, N] and y∞ [2, T, N]; with the inversion's diagonal ``flip`` [2, N] and
        sin(B1·θ) ([T, 1], or [T, N] when B1 is estimated)."""
        seq = self.sequence
        h = 0.5 * seq.TR                                   # half a TR: TR start -> echo -> TR end
        m0s, T1f, T2f, Rx, T1s, T2s = (p[k][None, :] for k in
                                       ("m0s", "T1f", "T2f", "Rx", "T1s", "T2s"))
        dtype, device = m0s.dtype, m0s.device

        # A·h and b·h are sums of (sequence column [T, 1]) × (voxel row [1, N]) products; kept in
        # that form, each [T, N] term has a one-product forward-mode tangent.
        x_f = Rx * (1 - m0s) * h                           # a12 = x_f·c  (exchange, times h)
        x_s = Rx * m0s * h                                 # a21 = x_s·c
        k_c2 = -(1 / T1f + Rx * m0s) * h                   # a11 = k_c2·c² + k_s2·s²
        k_s2 = -h / T2f
        k_w = -seq.k_RF * h / seq.TR * T2s                 # a22 = k_w·w − k_0
        k_0 = h / T1s + x_f
        k_b = (1 - m0s) * h / T1f                          # b1 = k_b·c
        b2 = m0s * h / T1s                                 # b2, one per voxel
        if "B1" in self.fixed:
            c, s, c2, s2, w, cw = self._sequence_columns(dtype, device, self.fixed["B1"])
        else:
            theta, w = self._sequence_columns(dtype, device, None)
            B1 = p["B1"][None, :]
            c, s = torch.cos(theta * B1), torch.sin(theta * B1)      # [T, N]
            c2, s2, cw = c * c, s * s, c * w
            k_w = k_w * (B1 * B1)                          # W ∝ (B1 θ)²
        a11 = c2 * k_c2 + s2 * k_s2                        # [T, N]
        a22 = w * k_w - k_0
        off = c2 * (x_f * x_s)                             # a12·a21, ≥ 0

        # E = e^μ (cosh r I + sinh(r)/r M) with M = A h − μ I = [[d, a12], [a21, −d]] and
        # r² = d² + a12·a21.
        mu = 0.5 * (a11 + a22)
        d = 0.5 * (a11 - a22)
        cosh_part, sinh_part = _exp_traceless(mu, d * d + off)
        sinh_d, sinh_c = sinh_part * d, sinh_part * c
        E = torch.stack((cosh_part + sinh_d, sinh_c * x_f,
                         sinh_c * x_s, cosh_part - sinh_d)).reshape(2, 2, *a11.shape)
        # y∞ = −A⁻¹ b = (a12 b2 − a22 b1, a21 b1 − a11 b2) / det A (h cancels).
        inv_det = (a11 * a22 - off).reciprocal()
        y_inf = torch.stack(((c * (x_f * b2 + k_0 * k_b) - cw * (k_w * k_b)) * inv_det,
                             (c2 * (x_s * k_b - k_c2 * b2) - s2 * (k_s2 * b2)) * inv_det))
        beta = 1 - math.pi ** 2 * T2s[0] / seq.T_inv
        flip = torch.stack((-torch.ones_like(beta), beta))  # the inversion, a diagonal matrix
        return E, y_inf, flip, s
