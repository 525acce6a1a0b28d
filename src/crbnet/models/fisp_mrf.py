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
"""

from __future__ import annotations

import torch

from .. import sequences as seqs
from .base import ParameterSpec, SignalModel


class FISPMRF(SignalModel):
    name = "fisp_mrf"
    sequence_kind = "fisp"
    specs = (
        ParameterSpec("T1", "s", (0.01, 10.0), (0.1, 4.0), 1.0, True, "longitudinal relaxation time"),
        ParameterSpec("T2", "s", (0.001, 5.0), (0.01, 0.5), 0.08, True, "transverse relaxation time"),
        ParameterSpec("B1", "", (0.3, 2.0), (0.7, 1.3), 1.0, False, "relative flip-angle scale"),
    )
    default_fixed = {"B1": 1.0}

    def __init__(self, sequence=None, fixed=None, max_order: int = 25) -> None:
        super().__init__(sequence, fixed)
        if max_order < 1:
            raise ValueError("max_order must be >= 1")
        self.max_order = int(max_order)

    @classmethod
    def default_sequence(cls) -> seqs.FISPSequence:
        return seqs.default_fisp_sequence()

    def _simulate(self, p: dict[str, torch.Tensor]) -> torch.Tensor:
        seq = self.sequence
        T1, T2, B1 = p["T1"][:, None], p["T2"][:, None], p["B1"][:, None]
        rdtype = T1.dtype
        cdtype = torch.complex128 if rdtype == torch.float64 else torch.complex64
        dev = T1.device
        n_states = self.max_order + 1
        alpha = B1 * torch.as_tensor(seq.flip, dtype=rdtype, device=dev)      # [N, T]
        cos_a, sin_a = torch.cos(alpha), torch.sin(alpha)
        cos2 = (0.5 * (1 + cos_a)).to(cdtype)   # cos²(α/2)
        sin2 = (0.5 * (1 - cos_a)).to(cdtype)   # sin²(α/2)
        isin = 1j * sin_a.to(cdtype)
        tr = torch.as_tensor(seq.TR, dtype=rdtype, device=dev)
        E1_te, E2_te = torch.exp(-seq.TE / T1), torch.exp(-seq.TE / T2)                 # [N,1]
        E1_rest, E2_rest = torch.exp(-(tr - seq.TE) / T1), torch.exp(-(tr - seq.TE) / T2)  # [N,T]

        N = T1.shape[0]
        zeros = torch.zeros(N, n_states, dtype=cdtype, device=dev)
        order0 = torch.zeros(n_states, dtype=rdtype, device=dev)
        order0[0] = 1.0
        order0 = order0.to(cdtype)
        # Ideal inversion from equilibrium, then free recovery for TI.
        E1_ti = torch.exp(-seq.TI / T1)
        Z = (1 - 2 * E1_ti).to(cdtype) * order0
        Fp, Fm = zeros, zeros
        out = []
        for n in range(seq.n_timepoints):
            c2, s2, isn, ca = cos2[:, n:n + 1], sin2[:, n:n + 1], isin[:, n:n + 1], cos_a[:, n:n + 1]
            Fp, Fm, Z = (c2 * Fp + s2 * Fm - isn * Z,
                         s2 * Fp + c2 * Fm + isn * Z,
                         -0.5 * isn * Fp + 0.5 * isn * Fm + ca * Z)
            Fp, Fm = Fp * E2_te, Fm * E2_te
            Z = Z * E1_te + (1 - E1_te) * order0
            out.append(Fp[:, 0])
            e1, e2 = E1_rest[:, n:n + 1], E2_rest[:, n:n + 1]
            Fp, Fm = Fp * e2, Fm * e2
            Z = Z * e1 + (1 - e1) * order0
            # Dephase one order: F+ moves up, F- moves down, F+_0 = conj(F-_0).
            Fm = torch.cat((Fm[:, 1:], zeros[:, :1]), 1)
            Fp = torch.cat((torch.conj(Fm[:, :1]), Fp[:, :-1]), 1)
        return torch.stack(out, 1)
