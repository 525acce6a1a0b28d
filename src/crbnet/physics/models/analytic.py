"""Closed-form models used to validate the simulator, Jacobians, CRB, NLLS and networks."""

from __future__ import annotations

import torch

from crbnet.physics import sequences as seqs
from crbnet.physics.models.base import ParameterSpec, SignalModel


def _times(model: SignalModel, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(model.sequence.times, dtype=like.dtype, device=like.device)


def _as_complex(x: torch.Tensor) -> torch.Tensor:
    return torch.complex(x, torch.zeros_like(x))


class T2Decay(SignalModel):
    """Mono-exponential decay of a multi-echo spin echo: ``f(t) = exp(-t / T2)``, t = echo times."""

    name = "t2_decay"
    sequence_kind = "times"
    specs = (ParameterSpec("T2", "s", (1e-3, 10.0), (0.01, 2.5), 0.08, True,
                           "transverse relaxation time", map_name="T2map"),)
    # Found by measurement (docs/training.md lists what was tried).
    training_defaults = {"data": {"batch_size": 256, "batches_per_epoch": 100, "pool_size": 0},
                         "net": {"width": 128, "depth": 3},
                         "optim": {"epochs": 30, "lr": 5e-3}}

    @classmethod
    def default_sequence(cls) -> seqs.TimesSequence:
        return seqs.default_echo_times()

    def _simulate(self, p: dict[str, torch.Tensor]) -> torch.Tensor:
        T2 = p["T2"][:, None]
        return _as_complex(torch.exp(-_times(self, T2) / T2))


class IRT1(SignalModel):
    """Inversion recovery with ideal inversion and full recovery: ``f(t) = 1 − 2·exp(-t / T1)``,
    t = inversion times."""

    name = "ir_t1"
    sequence_kind = "times"
    specs = (ParameterSpec("T1", "s", (1e-3, 10.0), (0.1, 5.0), 1.0, True,
                           "longitudinal relaxation time", map_name="T1map"),)
    # Found by measurement (docs/training.md lists what was tried).
    training_defaults = {"data": {"batch_size": 256, "batches_per_epoch": 100, "pool_size": 0},
                         "net": {"width": 128, "depth": 3},
                         "optim": {"epochs": 60, "lr": 5e-3}}

    @classmethod
    def default_sequence(cls) -> seqs.TimesSequence:
        return seqs.default_inversion_times()

    def _simulate(self, p: dict[str, torch.Tensor]) -> torch.Tensor:
        T1 = p["T1"][:, None]
        return _as_complex(1 - 2 * torch.exp(-_times(self, T1) / T1))
