"""Common base of all signal models: parameter bookkeeping and input checks.

A model maps biophysical parameters ``theta`` ([N, P], SI units, in the order of
``model.parameters``) to the noiseless complex signal for M0 = 1 ([N, T]). Physical parameters
that a model knows but that are not estimated (``fixed``) are held at a given value; B1 is the
usual example.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

from crbnet.errors import InputError
from crbnet.options import Option
from crbnet.physics import sequences as seqs


class ModelError(InputError):
    """Unknown parameter, out-of-bounds value, wrong shape: bad input to a model."""


@dataclass(frozen=True)
class ParameterSpec:
    """One physical parameter.

    Attributes:
        name: identifier used everywhere (files, CLI, checkpoints).
        unit: SI unit ('s', '1/s', '' for fractions and scales).
        bounds: physically admissible closed interval (SI).
        train_range: default range sampled for training (SI).
        default: a typical value (SI), used for fixed parameters and examples.
        log_uniform: whether training samples this parameter log-uniformly by default.
        description: one line for humans.
        map_name: file name stem of its parameter map (BIDS style where there is one:
            ``T1map``, ``T2map``, ``TB1map``); empty: the parameter's name.
    """

    name: str
    unit: str
    bounds: tuple[float, float]
    train_range: tuple[float, float]
    default: float
    log_uniform: bool = False
    description: str = ""
    map_name: str = ""


class ModelOption(Option):
    """A keyword argument of a model's constructor that is not a parameter (a numerical
    setting such as an EPG truncation order). Declared in ``SignalModel.options``; the model
    keeps its value in the attribute of the same name. Options are recorded in checkpoints and
    datasets and set on the command line with ``--model-option name=value``."""

    what = "model option"


class SignalModel:
    """Base class. Subclasses set ``name``, ``sequence_kind``, ``specs`` and ``default_fixed``
    (``options`` if their constructor takes settings, ``training_defaults`` if the built-in
    training settings do not suit them) and implement :meth:`_simulate` on
    the full (estimated + fixed) parameter set."""

    name: str = ""
    sequence_kind: str = ""
    specs: tuple[ParameterSpec, ...] = ()
    default_fixed: Mapping[str, float] = {}
    options: tuple[ModelOption, ...] = ()
    #: Training defaults for this model, partial ``TrainConfig`` sections (``{"net": {"width":
    #: 256}, "optim": {"lr": 2e-3}, ...}``) laid over the built-in defaults and under a config
    #: file and the command line; empty: the built-in defaults (docs/training.md).
    training_defaults: Mapping[str, Mapping[str, Any]] = {}

    def __init__(self, sequence: seqs.Sequence | None = None,
                 fixed: Mapping[str, float] | None = None) -> None:
        if sequence is None:
            sequence = self.default_sequence()
        if getattr(sequence, "kind", None) not in self.accepted_sequence_kinds():
            first, *others = self.accepted_sequence_kinds()
            alternatives = f" (or {' or '.join(map(repr, others))})" if others else ""
            raise ModelError(f"model {self.name!r} needs a {first!r} sequence{alternatives}, "
                             f"got {getattr(sequence, 'kind', type(sequence).__name__)!r}")
        self.sequence = sequence
        fixed = dict(self.default_fixed if fixed is None else fixed)
        known = {s.name: s for s in self.specs}
        for key, value in fixed.items():
            if key not in known:
                raise ModelError(f"unknown parameter {key!r} for model {self.name!r}; "
                                 f"known: {', '.join(known)}")
            lo, hi = known[key].bounds
            if not lo <= float(value) <= hi:
                raise ModelError(f"fixed {key}={value} is outside its bounds [{lo}, {hi}] "
                                 f"{known[key].unit}")
        self.fixed: dict[str, float] = {k: float(v) for k, v in fixed.items()}
        self.parameters: tuple[str, ...] = tuple(s.name for s in self.specs if s.name not in fixed)
        if not self.parameters:
            raise ModelError("at least one parameter must be estimated")

    # ---- description -------------------------------------------------------------------
    @classmethod
    def default_sequence(cls) -> seqs.Sequence:
        raise NotImplementedError

    @classmethod
    def accepted_sequence_kinds(cls) -> tuple[str, ...]:
        """The sequence kinds this model plays: ``sequence_kinds`` where a model declares
        several, else its one ``sequence_kind`` (the kind of its default sequence)."""
        return tuple(getattr(cls, "sequence_kinds", ()) or (cls.sequence_kind,))

    @property
    def all_parameters(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.specs)

    @property
    def option_values(self) -> dict[str, Any]:
        """``{option name: current value}`` for the declared :attr:`options`."""
        return {o.name: getattr(self, o.name) for o in self.options}

    def spec(self, name: str) -> ParameterSpec:
        for s in self.specs:
            if s.name == name:
                return s
        raise ModelError(f"unknown parameter {name!r} for model {self.name!r}; "
                         f"known: {', '.join(self.all_parameters)}")

    def map_name(self, name: str) -> str:
        """File name stem of a parameter's map (its spec's ``map_name``, else its name)."""
        return self.spec(name).map_name or name

    @property
    def units(self) -> dict[str, str]:
        return {p: self.spec(p).unit for p in self.parameters}

    @property
    def bounds(self) -> dict[str, tuple[float, float]]:
        return {p: self.spec(p).bounds for p in self.parameters}

    @property
    def train_ranges(self) -> dict[str, tuple[float, float]]:
        return {p: self.spec(p).train_range for p in self.parameters}

    @property
    def defaults(self) -> dict[str, float]:
        return {p: self.spec(p).default for p in self.parameters}

    @property
    def n_parameters(self) -> int:
        return len(self.parameters)

    @property
    def n_timepoints(self) -> int:
        return self.sequence.n_timepoints

    def describe(self) -> dict:
        """JSON-ready description (used by ``crbnet models`` and checkpoints)."""
        doc = (type(self).__doc__ or "").strip()
        return {
            "name": self.name,
            "summary": " ".join(doc.split("\n\n")[0].split()),
            "parameters": [
                {"name": s.name, "unit": s.unit, "bounds": list(s.bounds),
                 "train_range": list(s.train_range), "default": s.default,
                 "estimated": s.name in self.parameters, "description": s.description}
                for s in self.specs
            ],
            "fixed": self.fixed,
            "options": [{"name": o.name, "type": o.type.__name__, "default": o.default,
                         "value": getattr(self, o.name), "description": o.description}
                        for o in self.options],
            "n_timepoints": self.n_timepoints,
        }

    # ---- conversion & checks ---------------------------------------------------------------
    def theta_from_dict(self, values: Mapping[str, float], *, fill_defaults: bool = False,
                        dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """Build a [1, P] tensor from ``{name: value}``; unknown names are an error."""
        for key in values:
            if key not in self.parameters:
                if key in self.fixed:
                    raise ModelError(f"parameter {key!r} is fixed to {self.fixed[key]} in this "
                                     f"model; estimated: {', '.join(self.parameters)}")
                raise ModelError(f"unknown parameter {key!r} for model {self.name!r}; "
                                 f"known: {', '.join(self.parameters)}")
        missing = [p for p in self.parameters if p not in values]
        if missing and not fill_defaults:
            raise ModelError(f"missing parameter(s): {', '.join(missing)}")
        row = [float(values.get(p, self.spec(p).default)) for p in self.parameters]
        theta = torch.tensor([row], dtype=dtype)
        self.check_theta(theta)
        return theta

    def check_theta(self, theta: torch.Tensor) -> None:
        """Raise :class:`ModelError` for a wrong shape, NaN, or values outside the bounds."""
        if theta.ndim != 2 or theta.shape[1] != self.n_parameters:
            raise ModelError(f"theta must have shape [N, {self.n_parameters}] "
                             f"({', '.join(self.parameters)}), got {list(theta.shape)}")
        if not torch.isfinite(theta).all():
            raise ModelError("theta contains NaN or Inf")
        for j, p in enumerate(self.parameters):
            lo, hi = self.spec(p).bounds
            col = theta[:, j]
            if (col < lo).any() or (col > hi).any():
                bad = col[(col < lo) | (col > hi)][0].item()
                raise ModelError(f"{p}={bad:g} is outside its bounds [{lo:g}, {hi:g}] "
                                 f"{self.spec(p).unit}".rstrip())

    def full_parameters(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Columns of ``theta`` plus the fixed parameters, as a dict of [N] tensors."""
        out = {p: theta[..., j] for j, p in enumerate(self.parameters)}
        for p, v in self.fixed.items():
            out[p] = torch.full_like(theta[..., 0], v)
        return out

    # ---- physics -------------------------------------------------------------------------------
    def simulate(self, theta: torch.Tensor, *, check: bool = True) -> torch.Tensor:
        """Noiseless signal for M0 = 1.

        Args:
            theta: [N, P] real tensor in the order of ``self.parameters`` (SI units).
            check: validate shape and bounds (set False inside autodiff transforms).

        Returns:
            complex tensor [N, T] (complex128 for float64 input, complex64 for float32), on the
            device of ``theta``.
        """
        if check:
            self.check_theta(theta)
        return self._simulate(self.full_parameters(theta))

    def _simulate(self, p: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def signal_for_sequence(self, theta: torch.Tensor, played: Mapping[str, torch.Tensor]
                            ) -> torch.Tensor:
        """Optional (what sequence design needs): the noiseless signal [N, T] for M0 = 1 at
        ``theta`` [N, P] when the model plays the sequence whose arrays are ``played`` —
        tensors named like the fields of the model's sequence kind (``theta``/``TRF`` for
        'mt', ``flip``/``TR`` for 'fisp', ``alpha``/``TRF`` for 'segmented'); every other
        field is the model's own sequence's. Plain tensor operations only, so that forward
        mode in ``theta`` and reverse mode in ``played`` both differentiate it (the design
        cost takes a gradient of a Jacobian). Models without it cannot be designed."""
        raise NotImplementedError(f"model {self.name!r} cannot play a sequence given as "
                                  "tensors (signal_for_sequence), so it cannot be designed")

    #: Optional, for sequence design: where :meth:`signal_for_sequence` is a constant phase c
    #: times a real signal for every θ and played sequence (mt_hybrid_state: 1, fisp_mrf: i),
    #: that c (|c| = 1); design then works with the real signal (a constant phase is invisible
    #: to the Fisher matrix, and real arithmetic is half the work). None: a complex signal.
    real_signal_phase: complex | None = None
    #: Optional, for sequence design, with :attr:`real_signal_phase`: True where
    #: :meth:`signal_for_sequence` also accepts complex θ (complex128) and returns c·g(θ) for the
    #: real signal g continued analytically — then design takes ∂g/∂θ by the complex step
    #: (exact to round-off, one pass over (P+1)·N voxels: far cheaper than forward mode under
    #: reverse mode through a long recursion). False: forward mode (``torch.func.jvp``).
    analytic_in_theta: bool = False

    def explicit_signal_and_jacobian(self, theta: torch.Tensor
                                     ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Optional: the signal [N, T] and ∂f/∂θ as columns [P, N, T] (complex, or real where
        the signal is real for M0 = 1) by the model's own forward-mode derivative, for inputs
        where it has one (None otherwise, the default).
        :mod:`crbnet.crb` uses it in place of ``torch.func.jvp`` + ``vmap`` through
        :meth:`simulate`; both must agree to round-off (tested)."""
        return None

    def explicit_real_gram(self, theta: torch.Tensor) -> torch.Tensor | None:
        """Optional, for models whose signal is real for M0 = 1: the Gram matrix
        [N, P+1, P+1] of (∂f/∂θ_1, …, ∂f/∂θ_P, f) — all the Fisher information needs without a
        subspace — or None (the default; crbnet.crb then forms it from the Jacobian)."""
        return None

    def explicit_fisher_information(self, theta: torch.Tensor) -> torch.Tensor | None:
        """Optional, for any signal: the Fisher matrix ``Re(Jᴴ J)`` [N, P+2, P+2] of
        ``J = (∂f/∂θ_1, …, ∂f/∂θ_P, f, i·f)`` (σ = 1, M0 = 1, complex M0 as the last two
        parameters) — formed by the model without storing J — or None (the default)."""
        return None

    def explicit_signal_and_fisher(self, theta: torch.Tensor
                                   ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Optional: the signal [N, T] together with :meth:`explicit_fisher_information`,
        from one pass, or None (the default)."""
        return None

    def __repr__(self) -> str:
        fixed = f", fixed={self.fixed}" if self.fixed else ""
        return f"{type(self).__name__}(parameters={list(self.parameters)}{fixed})"


def resolve_ranges(model: SignalModel, ranges: Mapping[str, tuple[float, float]] | None,
                   base: Mapping[str, tuple[float, float]] | None = None,
                   what: str = "range") -> dict[str, tuple[float, float]]:
    """``base`` (default: the model's training ranges) overridden by ``ranges``; each override
    must be increasing and inside the parameter's physical bounds. ``what`` names the
    overrides in error messages ('range', 'bounds')."""
    out = dict(model.train_ranges if base is None else base)
    for name, value in (ranges or {}).items():
        if name not in model.parameters:
            raise InputError(f"unknown parameter {name!r} in {what}; estimated: "
                             f"{', '.join(model.parameters)}")
        lo, hi = (float(v) for v in value)
        b_lo, b_hi = model.spec(name).bounds
        if not (b_lo <= lo < hi <= b_hi):
            raise InputError(f"{what} of {name} [{lo:g}, {hi:g}] must be increasing and inside "
                             f"the model's bounds [{b_lo:g}, {b_hi:g}]")
        out[name] = (lo, hi)
    return out
