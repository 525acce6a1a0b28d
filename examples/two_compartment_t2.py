"""A signal model of one's own: two water compartments with different T2 (docs/models.md).

Multi-echo spin echo of a voxel holding two water pools that do not exchange on the echo time
scale — e.g. myelin water (short T2) and intra/extracellular water (long T2):

    f(t) = fs · exp(−t / T2s) + (1 − fs) · exp(−t / T2l),   t = echo times (s)

Use it from the command line without installing anything:

    crbnet crb --model examples/two_compartment_t2.py:TwoCompartmentT2 --param fs=0.2
"""

from __future__ import annotations

import numpy as np
import torch

from crbnet import sequences
from crbnet.models import ParameterSpec, SignalModel


class TwoCompartmentT2(SignalModel):
    """Two non-exchanging T2 compartments in a multi-echo spin echo (short-T2 fraction fs)."""

    name = "two_compartment_t2"
    sequence_kind = "times"          # a TimesSequence: the echo times, `--times` on the CLI
    specs = (
        #            name   unit  bounds          training range  default  log-uniform
        ParameterSpec("fs", "", (0.0, 1.0), (0.05, 0.4), 0.2, False,
                      "fraction of the short-T2 compartment"),
        ParameterSpec("T2s", "s", (1e-3, 0.05), (0.008, 0.03), 0.015, True,
                      "T2 of the short compartment"),
        ParameterSpec("T2l", "s", (0.03, 1.0), (0.05, 0.15), 0.08, True,
                      "T2 of the long compartment"),
    )

    @classmethod
    def default_sequence(cls) -> sequences.TimesSequence:
        """48 echoes every 5 ms: short enough spacing to see the fast decay."""
        return sequences.TimesSequence(times=5e-3 * np.arange(1, 49))

    def _simulate(self, p: dict[str, torch.Tensor]) -> torch.Tensor:
        """Noiseless signal for M0 = 1, complex [N, T], from parameter columns [N] (SI)."""
        fs, T2s, T2l = p["fs"][:, None], p["T2s"][:, None], p["T2l"][:, None]
        t = torch.as_tensor(self.sequence.times, dtype=fs.dtype, device=fs.device)
        decay = fs * torch.exp(-t / T2s) + (1 - fs) * torch.exp(-t / T2l)
        return torch.complex(decay, torch.zeros_like(decay))
