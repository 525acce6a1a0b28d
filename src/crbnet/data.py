"""Training and test data: parameter sampling, random M0, complex Gaussian noise.

Statistics only — the physics lives in ``models/``, the learning in ``train.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

import torch

from .errors import InputError
from .models.base import SignalModel

DISTRIBUTIONS = ("uniform", "log-uniform")


@dataclass
class ParameterSampler:
    """Independent draws of each estimated parameter from a range and a distribution.

    Args:
        model: the signal model (its ``parameters`` give the column order).
        ranges: ``{name: (low, high)}`` in SI; missing names use the model's training range.
        distributions: ``{name: 'uniform' | 'log-uniform'}``; missing names use the model's
            default for that parameter.
    """

    model: SignalModel
    ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    distributions: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in list(self.ranges) + list(self.distributions):
            if name not in self.model.parameters:
                raise InputError(f"unknown parameter {name!r} in sampling spec; estimated: "
                                 f"{', '.join(self.model.parameters)}")
        self.low, self.high, self.log = [], [], []
        for p in self.model.parameters:
            spec = self.model.spec(p)
            lo, hi = (float(v) for v in self.ranges.get(p, spec.train_range))
            dist = self.distributions.get(p, "log-uniform" if spec.log_uniform else "uniform")
            if dist not in DISTRIBUTIONS:
                raise InputError(f"distribution of {p} must be one of {DISTRIBUTIONS}, got {dist!r}")
            if not (spec.bounds[0] <= lo < hi <= spec.bounds[1]):
                raise InputError(f"range of {p} [{lo:g}, {hi:g}] must be increasing and inside "
                                 f"the bounds [{spec.bounds[0]:g}, {spec.bounds[1]:g}]")
            if dist == "log-uniform" and lo <= 0:
                raise InputError(f"log-uniform range of {p} must be positive")
            self.low.append(lo)
            self.high.append(hi)
            self.log.append(dist == "log-uniform")

    def spec_dict(self) -> dict:
        """JSON-ready description (stored in checkpoints)."""
        return {p: {"range": [lo, hi], "distribution": "log-uniform" if lg else "uniform"}
                for p, lo, hi, lg in zip(self.model.parameters, self.low, self.high, self.log)}

    def sample(self, n: int, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu") -> torch.Tensor:
        """[n, P] parameters."""
        u = torch.rand(n, len(self.low), generator=generator, dtype=torch.float64)
        cols = []
        for j, (lo, hi, lg) in enumerate(zip(self.low, self.high, self.log)):
            if lg:
                cols.append(torch.exp(math.log(lo) + u[:, j] * (math.log(hi) - math.log(lo))))
            else:
                cols.append(lo + u[:, j] * (hi - lo))
        return torch.stack(cols, 1).to(dtype=dtype, device=device)


def random_m0(n: int, magnitude: tuple[float, float] = (1.0, 1.0),
              generator: torch.Generator | None = None, dtype: torch.dtype = torch.complex128,
              device: torch.device | str = "cpu") -> torch.Tensor:
    """Complex M0 with magnitude uniform in ``magnitude`` and phase uniform in [0, 2π), [n]."""
    lo, hi = magnitude
    mag = lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)
    phase = 2 * math.pi * torch.rand(n, generator=generator, dtype=torch.float64)
    return torch.polar(mag, phase).to(dtype=dtype, device=device)


def add_noise(signals: torch.Tensor, sigma: float | torch.Tensor,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Add complex white Gaussian noise, std ``sigma`` on the real and on the imaginary part.

    ``sigma`` is a scalar or [N] (one value per voxel). The noise is drawn on the CPU with
    ``generator`` (reproducible across devices) and moved to the signals' device.
    """
    real_dtype = torch.float64 if signals.dtype == torch.complex128 else torch.float32
    noise = torch.randn(*signals.shape, 2, generator=generator, dtype=real_dtype)
    noise = torch.view_as_complex(noise).to(signals.device)
    sig = torch.as_tensor(sigma, dtype=real_dtype, device=signals.device)
    if sig.ndim == 1:
        sig = sig[:, None]
    return signals + sig * noise
