"""Networks that map (compressed) signals to parameters: M0-invariant input, MLP, bounded output.

Input normalization — invariance to the complex M0 (magnitude and phase)
-----------------------------------------------------------------------
A measurement is ``z = M0·f(θ) + n`` (``z`` = subspace coefficients ``Uᴴ y``). The parameters
do not depend on M0, so the network sees a representation ``x(z)`` with ``x(c·z) = x(z)`` for
every complex ``c ≠ 0``:

1. phase: ``r = Σ_j z_j²`` (a complex number ≈ M0²·Σ f_j²); rotate ``z`` by ``exp(−i·arg(r)/2)``.
   For models whose noiseless signal is real up to a constant phase (all four here: MT, IR and
   T2 decay are real, FISP is imaginary) ``|Σ f_j²| = ‖f‖²``, so this phase estimate never
   degenerates — unlike the phase of a single coefficient, which can pass through 0.
2. sign: the half angle leaves a sign; flip so that ``Re x_1 ≥ 0`` (``x_1``: the coefficient on
   the dominant singular vector). A measurement ``+g`` with M0 and ``−g`` with ``−M0`` are the
   same data, so the sign carries no information about θ.
3. magnitude: divide by ``‖z‖``.
4. features ``[Re x, Im x]`` (2k reals), standardized with a fixed mean/std measured on
   training data (stored in the network's buffers, hence in the checkpoint).

Steps 1–3 make the input exactly invariant to ``c`` (up to float rounding, and except on the
measure-zero set ``Re x_1 = 0``). The CRB of θ does depend on |M0|, through SNR = |M0|/σ only:
the loss uses ``CRB(σ=1, |M0|=1)·σ²/|M0|²``, consistent with whatever M0 was drawn.

Network
-------
``[Linear(2k→width)] + depth × [norm → activation → Linear(width→width)] (+ skip if residual)
+ [norm → activation → Linear(width→P)]``. The P outputs ``h`` are mapped into each parameter's
output range by a sigmoid, in log space for log-uniformly sampled parameters:
``θ = low + sigmoid(h)·(high − low)`` (or ``exp`` of that in log space). The output range is the
training range widened by ``output_margin`` of its width on each side (in the sampling space)
and clipped to the physical bounds, so the network can reach slightly past the training prior
but never leaves the bounds.

Defaults and what was tried: see docs/training.md (measurements per model).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

import torch
from torch import nn

from crbnet.errors import InputError

NORMS = ("layer", "batch", "none")
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


@dataclass
class NetConfig:
    """Architecture of the MLP (the ``[net]`` table of a training config).

    Attributes:
        width: hidden units per layer.
        depth: hidden blocks (each: norm → activation → linear).
        residual: add each block's input to its output.
        norm: 'layer', 'batch' or 'none'.
        activation: 'relu', 'gelu', 'silu' or 'tanh'.
        output_margin: widening of the output range beyond the training range, as a fraction
            of its width on each side (sampling space).
    """

    width: int = 256
    depth: int = 4
    residual: bool = True
    norm: str = "layer"
    activation: str = "silu"
    output_margin: float = 0.1

    def __post_init__(self) -> None:
        if int(self.width) < 1 or int(self.depth) < 0:
            raise InputError("net.width must be >= 1 and net.depth >= 0")
        self.width, self.depth = int(self.width), int(self.depth)
        self.residual = bool(self.residual)
        if self.norm not in NORMS:
            raise InputError(f"net.norm must be one of {NORMS}, got {self.norm!r}")
        if self.activation not in ACTIVATIONS:
            raise InputError(f"net.activation must be one of {tuple(ACTIVATIONS)}, "
                             f"got {self.activation!r}")
        self.output_margin = float(self.output_margin)
        if not 0 <= self.output_margin <= 1:
            raise InputError("net.output_margin must be in [0, 1]")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "NetConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise InputError(f"unknown net option(s): {', '.join(sorted(unknown))}; "
                             f"known: {', '.join(sorted(known))}")
        return cls(**data)

    def to_dict(self) -> dict:
        return asdict(self)


def invariant_features(z: torch.Tensor) -> torch.Tensor:
    """M0-invariant real features ``[Re x, Im x]`` [N, 2k] of complex coefficients ``z`` [N, k]
    (steps 1–3 of the module docstring)."""
    r = (z * z).sum(-1, keepdim=True)
    x = z * torch.polar(torch.ones_like(r.real), -0.5 * torch.angle(r))
    sign = torch.where(x[:, :1].real < 0, -1.0, 1.0).to(x.real.dtype)
    # ‖z‖ from the real view: the same number, without the slow complex-abs path.
    norm = torch.view_as_real(z).square().sum((-2, -1)).sqrt()[:, None].clamp_min(
        torch.finfo(x.real.dtype).tiny)
    x = x * (sign / norm)
    return torch.cat((x.real, x.imag), -1)


def output_ranges(sampling: Mapping[str, Mapping[str, Any]],
                  bounds: Mapping[str, tuple[float, float]], margin: float
                  ) -> tuple[list[float], list[float], list[bool]]:
    """Per parameter (in ``sampling`` order): low, high (SI) and whether the map is logarithmic.

    ``sampling`` is :meth:`ParameterSampler.spec_dict`; the range is widened by ``margin`` of its
    width in the sampling space and clipped to ``bounds``.
    """
    lows, highs, logs = [], [], []
    for name, entry in sampling.items():
        lo, hi = (float(v) for v in entry["range"])
        log = entry["distribution"] == "log-uniform"
        b_lo, b_hi = (float(v) for v in bounds[name])
        if log:
            a, b = math.log(lo), math.log(hi)
            w = b - a
            lo_out = max(math.exp(a - margin * w), b_lo)
            hi_out = min(math.exp(b + margin * w), b_hi)
        else:
            w = hi - lo
            lo_out, hi_out = max(lo - margin * w, b_lo), min(hi + margin * w, b_hi)
        if log and lo_out <= 0:
            raise InputError(f"log-scaled output range of {name} must be positive")
        lows.append(lo_out)
        highs.append(hi_out)
        logs.append(log)
    return lows, highs, logs


class MLP(nn.Module):
    """Fully connected network with optional residual blocks and normalization."""

    def __init__(self, in_features: int, out_features: int, config: NetConfig) -> None:
        super().__init__()
        self.config = config
        act = ACTIVATIONS[config.activation]

        def norm() -> nn.Module:
            if config.norm == "layer":
                return nn.LayerNorm(config.width)
            if config.norm == "batch":
                return nn.BatchNorm1d(config.width)
            return nn.Identity()

        self.inp = nn.Linear(in_features, config.width)
        self.blocks = nn.ModuleList(
            nn.Sequential(norm(), act(), nn.Linear(config.width, config.width))
            for _ in range(config.depth))
        self.head = nn.Sequential(norm(), act(), nn.Linear(config.width, out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h) if self.config.residual else block(h)
        return self.head(h)


class ParameterNet(nn.Module):
    """Subspace coefficients -> parameters (SI), invariant to M0.

    Args:
        n_coefficients: k, the length of the (complex) input.
        parameters: estimated parameter names (output column order).
        output_low, output_high, output_log: output ranges (see :func:`output_ranges`).
        config: architecture.

    ``forward(z)`` takes complex ``z`` [N, k] and returns [N, P] in the dtype of ``z``'s real
    part. The input statistics (``feature_mean``, ``feature_std``) are buffers set once with
    :meth:`set_input_statistics` before training.
    """

    def __init__(self, n_coefficients: int, parameters: list[str] | tuple[str, ...],
                 output_low: list[float], output_high: list[float], output_log: list[bool],
                 config: NetConfig | None = None) -> None:
        super().__init__()
        self.config = config or NetConfig()
        self.n_coefficients = int(n_coefficients)
        self.parameter_names = tuple(parameters)
        P = len(self.parameter_names)
        if not (len(output_low) == len(output_high) == len(output_log) == P):
            raise InputError("output ranges must have one entry per parameter")
        log = torch.tensor(output_log, dtype=torch.bool)
        low = torch.tensor(output_low, dtype=torch.float64)
        high = torch.tensor(output_high, dtype=torch.float64)
        self.register_buffer("output_log", log)
        self.register_buffer("output_low", torch.where(log, low.log(), low).float())
        self.register_buffer("output_high", torch.where(log, high.log(), high).float())
        self.register_buffer("feature_mean", torch.zeros(2 * self.n_coefficients))
        self.register_buffer("feature_std", torch.ones(2 * self.n_coefficients))
        self.mlp = MLP(2 * self.n_coefficients, P, self.config)

    # --- description (stored in checkpoints; with the state dict it rebuilds the network) ---
    def describe(self) -> dict:
        low = torch.where(self.output_log, self.output_low.double().exp(), self.output_low.double())
        high = torch.where(self.output_log, self.output_high.double().exp(),
                           self.output_high.double())
        return {"n_coefficients": self.n_coefficients, "parameters": list(self.parameter_names),
                "output_low": low.tolist(), "output_high": high.tolist(),
                "output_log": self.output_log.tolist(), "config": self.config.to_dict()}

    @classmethod
    def from_description(cls, d: Mapping[str, Any]) -> "ParameterNet":
        return cls(d["n_coefficients"], d["parameters"], d["output_low"], d["output_high"],
                   d["output_log"], NetConfig.from_dict(d["config"]))

    @torch.no_grad()
    def set_input_statistics(self, coefficients: torch.Tensor) -> None:
        """Standardize features with the mean/std of these (noisy, training-like) inputs."""
        feats = invariant_features(coefficients).double()
        self.feature_mean.copy_(feats.mean(0).float())
        # Im of the first coefficient is ~0 after the phase step; keep its std away from 0.
        self.feature_std.copy_(feats.std(0).clamp_min(1e-3).float())

    def features(self, z: torch.Tensor) -> torch.Tensor:
        feats = invariant_features(z)
        return (feats - self.feature_mean.to(feats.dtype)) / self.feature_std.to(feats.dtype)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mlp(self.features(z))
        low, high = self.output_low.to(h.dtype), self.output_high.to(h.dtype)
        v = low + torch.sigmoid(h) * (high - low)
        # exp only where the map is logarithmic: exp of a linear-scale value (e.g. Rx = 300)
        # would overflow and turn the discarded branch's gradient into NaN.
        v_log = torch.where(self.output_log, v, torch.zeros_like(v))
        return torch.where(self.output_log, torch.exp(v_log), v)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = ["NetConfig", "MLP", "ParameterNet", "invariant_features", "output_ranges",
           "count_parameters"]
