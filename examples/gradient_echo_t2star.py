"""A sequence kind of one's own, and a model that plays it (docs/models.md).

The kind ``gre_echoes``: a multi-echo gradient echo given by its echo times and flip angle; a
sequence file of this kind is JSON, e.g. ``{"TE": [0.004, 0.008, 0.016], "flip": 0.26}``. The
model ``T2StarDecay`` plays it: f(TE) = sin(flip) · exp(−TE / T2s) for M0 = 1.

Importing this file registers the kind, so both load from the command line without installing
anything:

    crbnet crb --model examples/gradient_echo_t2star.py:T2StarDecay \\
        --sequence my_echoes.json --param T2s=0.03

Installed in a package, the kind is reached by its name through the entry-point group
``crbnet.sequences``; from Python, ``crbnet.sequences.kind_of("FILE.py:GradientEchoes")``
loads and registers it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from crbnet import sequences
from crbnet.models import ParameterSpec, SignalModel


@sequences.register_sequence_kind
@dataclass(frozen=True, eq=False)
class GradientEchoes:
    """Echo times TE (s, increasing) of one excitation with flip angle ``flip`` (rad)."""

    TE: np.ndarray
    flip: float = np.pi / 12
    kind: str = field(default="gre_echoes", init=False)

    def __post_init__(self) -> None:
        te = np.asarray(self.TE, dtype=np.float64).reshape(-1)
        if te.size == 0 or not np.all(np.isfinite(te)) or np.any(te <= 0):
            raise sequences.SequenceError("TE must be a non-empty list of positive times (s)")
        object.__setattr__(self, "TE", te)
        object.__setattr__(self, "flip", float(self.flip))

    @property
    def n_timepoints(self) -> int:
        return int(self.TE.size)

    def to_dict(self) -> dict:
        return {"TE": self.TE.tolist(), "flip": self.flip}


class T2StarDecay(SignalModel):
    """Mono-exponential T2* decay over the echoes of one gradient-echo excitation."""

    name = "t2star_decay"
    sequence_kind = "gre_echoes"
    specs = (ParameterSpec("T2s", "s", (1e-3, 1.0), (0.01, 0.1), 0.04, True, "T2*"),)

    @classmethod
    def default_sequence(cls) -> GradientEchoes:
        """12 echoes every 4 ms."""
        return GradientEchoes(TE=4e-3 * np.arange(1, 13))

    def _simulate(self, p: dict[str, torch.Tensor]) -> torch.Tensor:
        T2s = p["T2s"][:, None]
        te = torch.as_tensor(self.sequence.TE, dtype=T2s.dtype, device=T2s.device)
        decay = np.sin(self.sequence.flip) * torch.exp(-te / T2s)
        return torch.complex(decay, torch.zeros_like(decay))
