"""Parameter sampling: independent draws of each estimated parameter from a range, and seeded
generators derived from a seed and labels (one independent stream per purpose)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

import torch

from crbnet.errors import InputError
from crbnet.physics.models.base import SignalModel

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


def sampler_from_spec(model: SignalModel, spec: Mapping[str, object] | None) -> ParameterSampler:
    """Build a :class:`ParameterSampler` from a config mapping.

    ``spec`` maps a parameter name to ``{"range": [low, high], "distribution": "uniform" |
    "log-uniform"}`` (either key optional) — the form of the ``[sampling]`` table of a training
    config and of :meth:`ParameterSampler.spec_dict`.
    """
    ranges: dict[str, tuple[float, float]] = {}
    dists: dict[str, str] = {}
    for name, entry in (spec or {}).items():
        if not isinstance(entry, Mapping):
            raise InputError(f"sampling.{name} must be a table with 'range' and/or "
                             f"'distribution', got {entry!r}")
        unknown = set(entry) - {"range", "distribution"}
        if unknown:
            raise InputError(f"sampling.{name}: unknown key(s) {', '.join(sorted(unknown))}")
        if "range" in entry:
            rng = entry["range"]
            try:
                lo, hi = (float(v) for v in rng)  # type: ignore[union-attr]
            except (TypeError, ValueError):
                raise InputError(f"sampling.{name}.range must be [low, high], got {rng!r}") from None
            ranges[name] = (lo, hi)
        if "distribution" in entry:
            dists[name] = str(entry["distribution"])
    return ParameterSampler(model, ranges, dists)


def derived_generator(seed: int, *labels: object) -> torch.Generator:
    """A CPU generator seeded from ``seed`` and labels, e.g. ``(seed, "pool", 3, rank)``.

    Independent streams for independent purposes (validation set, basis, pool generations,
    ranks) make every piece reproducible on its own — the key to an exact ``--resume``.
    """
    import hashlib

    digest = hashlib.sha256(repr((int(seed),) + labels).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
