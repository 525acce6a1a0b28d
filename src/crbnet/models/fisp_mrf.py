"""Single-pool FISP MR fingerprinting (Jiang et al., MRM 2015;74:1621) by extended phase graphs.

Per TR n: an RF pulse of flip ``B1·α_n`` about x (phase 0), relaxation for TE, readout of the
k = 0 transverse state ``F⁺₀``, relaxation for ``TR_n − TE``, then the unbalanced readout
gradient dephases by one order (k → k + 1). The experiment starts from equilibrium with an ideal
inversion, ``TI`` before the first pulse; there is no steady state (one shot).

Truncation: states of order k > ``max_order`` are dropped after each dephasing. Because T2
decay shrinks a state of order k by at least ``exp(-k·TR/T2)`` before it can return to k = 0,
orders beyond ~20 contribute < 1e-4 of the signal for T2 ≤ 0.5 s with the default schedule
(tests compare against a brute-force isochromat simulation). The RF matrix follows
Weigel, JMRI 2015;41:266 (eq. 15 with phase 0).

Real arithmetic: with RF phase 0 every ``F±_k`` stays purely imaginary and every ``Z_k`` real
(the RF mixes ``F±`` with ``±i·sin α·Z``, relaxation is real, and ``F⁺₀ = conj(F⁻₀)`` maps an
imaginary number to an imaginary one), so the states are kept as ``f± = Im F±`` and ``z``:
a quarter of the arithmetic of complex states. States are [K, N] (order, voxel) so that the
per-TR coefficients and the readout are contiguous rows.
"""

from __future__ import annotations

import torch

from .. import sequences as seqs
from .base import ModelOption, ParameterSpec, SignalModel


class FISPMRF(SignalModel):
    """Single-pool FISP MR fingerprinting by extended phase graphs (flip-angle and TR trains)."""

    name = "fisp_mrf"
    sequence_kind = "fisp"
    specs = (
        ParameterSpec("T1", "s", (0.01, 10.0), (0.1, 4.0), 1.0, True, "longitudinal relaxation time"),
        ParameterSpec("T2", "s", (0.001, 5.0), (0.01, 0.5), 0.08, True, "transverse relaxation time"),
        ParameterSpec("B1", "", (0.3, 2.0), (0.7, 1.3), 1.0, False, "relative flip-angle scale"),
    )
    default_fixed = {"B1": 1.0}
    # Voxels per pass of :meth:`_simulate` (bounds memory and keeps the states cache-sized) and
    # per chunk in crbnet.crb (the TR loop has small per-step tensors, so per-operation overhead
    # dominates there). Results do not depend on either.
    chunk_size = 4096
    crb_chunk_size = 4096
    options = (ModelOption("max_order", int, 25, "highest EPG dephasing order kept"),)

    def __init__(self, sequence=None, fixed=None, max_order: int = 25) -> None:
        super().__init__(sequence, fixed)
        if max_order < 1:
            raise ValueError("max_order must be >= 1")
        self.max_order = int(max_order)

    @classmethod
    def default_sequence(cls) -> seqs.FISPSequence:
        return seqs.default_fisp_sequence()

    def _simulate(self, p: dict[str, torch.Tensor]) -> torch.Tensor:
        n = p["T1"].shape[0]
        if n <= self.chunk_size:
            return self._simulate_chunk(p)
        return torch.cat([self._simulate_chunk({k: v[i:i + self.chunk_size] for k, v in p.items()})
                          for i in range(0, n, self.chunk_size)])

    def _simulate_chunk(self, p: dict[str, torch.Tensor]) -> torch.Tensor:
        seq = self.sequence
        T1 = p["T1"]
        flip = torch.as_tensor(seq.flip, dtype=T1.dtype, device=T1.device)
        tr = torch.as_tensor(seq.TR, dtype=T1.dtype, device=T1.device)
        B1 = self.fixed["B1"] if "B1" in self.fixed else p["B1"]
        return epg_signal(T1, p["T2"], B1, flip, tr, seq.TE, seq.TI, self.max_order + 1)


def epg_signal(T1: torch.Tensor, T2: torch.Tensor, B1: torch.Tensor | float,
               flip: torch.Tensor, tr: torch.Tensor, TE: float, TI: float, n_states: int
               ) -> torch.Tensor:
    """The FISP signal [N, T] (complex, M0 = 1) by the EPG recursion above, in plain tensor
    operations: differentiable by any autodiff in the tissue (T1, T2 [N], s; B1 [N] or a number)
    and in the schedule (flip [T], rad; tr [T], s) — sequence design differentiates it in flip
    and TR. ``n_states`` EPG orders 0 … n_states − 1 are kept."""
    echoes = epg_echoes(T1, T2, B1, flip, tr, TE, TI, n_states)
    return torch.complex(torch.zeros_like(echoes), echoes)


def epg_echoes(T1: torch.Tensor, T2: torch.Tensor, B1: torch.Tensor | float,
               flip: torch.Tensor, tr: torch.Tensor, TE: float, TI: float, n_states: int
               ) -> torch.Tensor:
    """``Im F⁺₀`` at every echo, [N, T], for the arguments of :func:`epg_signal` — the signal is
    ``i`` times it. Analytic in T1, T2 and B1: complex values of them are accepted, which
    gives derivatives by the complex step (exact to round-off, no subtraction)."""
    T1, T2 = T1[None, :], T2[None, :]                                     # [1, N]
    dtype, device = T1.dtype, T1.device
    flip, tr = flip[:, None], tr[:, None]                                 # [T, 1]
    # A fixed B1 keeps the RF coefficients per TR ([T, 1]) instead of per voxel ([T, N]).
    alpha = flip * (B1[None, :] if torch.is_tensor(B1) else B1)
    cos_a, sin_a = torch.cos(alpha), torch.sin(alpha)
    cos2, sin2 = 0.5 * (1 + cos_a), 0.5 * (1 - cos_a)     # cos²(α/2), sin²(α/2)
    half_sin = 0.5 * sin_a
    E2_te = torch.exp(-TE / T2)                            # [1, N]: decay until the echo
    E1_tr, E2_tr = torch.exp(-tr / T1), torch.exp(-tr / T2)   # [T, N]: over a whole TR
    recovery = 1 - E1_tr

    states_dtype = torch.promote_types(E1_tr.dtype, cos_a.dtype)   # complex under a complex step
    f_plus = torch.zeros(n_states, T1.shape[1], dtype=states_dtype, device=device)
    f_minus = f_plus
    order0 = torch.zeros(n_states, 1, dtype=dtype, device=device)
    order0[0] = 1
    # Ideal inversion from equilibrium, then free recovery for TI.
    z = (1 - 2 * torch.exp(-TI / T1)) * order0
    out = []
    for n in range(flip.shape[0]):
        # RF about x. It conserves F⁺ + F⁻, which gives the new f⁻ almost for free.
        f_rf = cos2[n] * f_plus + sin2[n] * f_minus - sin_a[n] * z
        f_minus, z = f_plus + f_minus - f_rf, half_sin[n] * (f_plus - f_minus) + cos_a[n] * z
        out.append(f_rf[0] * E2_te[0])                     # F⁺₀ at TE, relaxed until then
        # Relaxation over the whole TR (TE, then TR − TE, combined).
        f_rf, f_minus = f_rf * E2_tr[n], f_minus * E2_tr[n]
        z = z * E1_tr[n] + recovery[n] * order0
        # Dephase one order: F+ moves up, F- moves down, F+_0 = conj(F-_0).
        f_minus = torch.cat((f_minus[1:], torch.zeros_like(f_minus[:1])))
        f_plus = torch.cat((-f_minus[:1], f_rf[:-1]))
    return torch.stack(out, 1)                             # [N, T], the imaginary part
