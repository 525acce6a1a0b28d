"""What every estimator (network, NLLS, dictionary matching) offers, the estimator registry,
and shared helpers.

An estimator has ``model`` (a :class:`~crbnet.physics.models.base.SignalModel`), ``parameters`` (the
names of the estimated parameters, in column order), ``name`` (short label for reports) and
``predict(signals) -> Tensor [N, P]`` (SI units), where ``signals`` is a complex tensor or
array ``[N, T]`` — the full time series as the model simulates it, with arbitrary complex M0.

An estimator that fits the signal itself (dictionary matching, NLLS) may also offer
``predict_with_fit(signals) -> SignalFit``: the estimates with the complex M0 and the residual
energy of its fit, so that a caller (``crbnet apply``) need not simulate ``f(θ̂)`` again.

The registry (:func:`register_estimator`, :func:`get`, :func:`names`) names every kind of
estimator: a factory ``factory(model, **options) -> Estimator`` (an estimator class is one)
registered under a name. The built-ins are ``nlls`` and ``dictionary`` (crbnet.estimators) and
``network`` (crbnet.estimators.network; its option ``checkpoint`` is a trained checkpoint); each
registers itself from its own module of the package. The CLI's ``--method`` choices are the
kinds that need no checkpoint. An estimator of one's own needs no change here: :func:`kind`
also finds installed plugins (entry-point group ``crbnet.estimators``) and ``FILE.py:NAME`` /
``package.module:NAME`` (:mod:`crbnet.plugins`).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, runtime_checkable

import numpy as np
import torch

from crbnet import plugins
from crbnet.errors import InputError
from crbnet.physics.models.base import SignalModel


@runtime_checkable
class Estimator(Protocol):
    model: SignalModel
    name: str

    @property
    def parameters(self) -> tuple[str, ...]: ...

    def predict(self, signals: torch.Tensor | np.ndarray) -> torch.Tensor: ...


@dataclass
class SignalFit:
    """An estimator's fit of N voxels ``y ≈ M0·f(θ̂)``.

    Attributes:
        theta: [N, P] float64 estimates (SI).
        m0: [N] complex128 least-squares M0 given θ̂ (input units).
        rss: [N] float64 residual energy ``‖y − M0·f(θ̂)‖²`` (input units squared).
    """

    theta: torch.Tensor
    m0: torch.Tensor
    rss: torch.Tensor


def least_squares_m0(f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Complex M0 minimizing ``‖y − M0·f‖²`` per row: ``fᴴy / fᴴf`` ([N] from [N, T] each; a
    zero ``f`` gives M0 = 0)."""
    energy = (f.real.square() + f.imag.square()).sum(-1) if f.is_complex() else f.square().sum(-1)
    return (f.conj() * y).sum(-1) / energy.clamp_min(torch.finfo(energy.dtype).tiny)


def _all_finite(x: torch.Tensor) -> bool:
    """Whether every element is finite. A NaN or Inf anywhere makes the sum non-finite, so one
    reduction answers almost always; only a non-finite sum (which huge finite values could
    also give, by overflow) needs the element-wise check."""
    return bool(torch.isfinite(x.sum())) or bool(torch.isfinite(torch.view_as_real(x)).all())


def as_signal_tensor(signals: torch.Tensor | np.ndarray, n_timepoints: int,
                     dtype: torch.dtype | None = torch.complex128,
                     device: torch.device | str | None = None) -> torch.Tensor:
    """Check and convert measured signals to a complex tensor [N, T] (``dtype=None`` keeps the
    input's complex dtype).

    Raises :class:`InputError` for a real-valued input, a wrong number of time points, or
    NaN/Inf values (mask those voxels out first).
    """
    if isinstance(signals, np.ndarray):
        signals = torch.from_numpy(np.ascontiguousarray(signals))
    if not isinstance(signals, torch.Tensor):
        raise InputError(f"signals must be a tensor or array, got {type(signals).__name__}")
    if not signals.is_complex():
        raise InputError("signals must be complex (real and imaginary part); for magnitude and "
                         "phase data combine them as magnitude·exp(i·phase) first")
    if signals.ndim == 1:
        signals = signals[None]
    if signals.ndim != 2:
        raise InputError(f"signals must have shape [N, T], got {list(signals.shape)}")
    if signals.shape[1] != n_timepoints:
        raise InputError(f"signals have {signals.shape[1]} time points but the sequence has "
                         f"{n_timepoints}")
    if not _all_finite(signals):
        raise InputError("signals contain NaN or Inf")
    return signals.to(dtype=dtype or signals.dtype,
                      device=device if device is not None else signals.device)


# ---- registry ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class EstimatorKind:
    """A registered kind of estimator.

    Attributes:
        name: what ``--method``, ``compare`` and :func:`get` call it.
        factory: ``factory(model, **options) -> Estimator``.
        description: one line for humans.
        needs_checkpoint: built from a trained checkpoint (option ``checkpoint``) rather than
            from the model alone.
    """

    name: str
    factory: Callable[..., Estimator]
    description: str
    needs_checkpoint: bool = False

    @property
    def option_names(self) -> list[str]:
        """The keyword options the factory accepts (``model`` excluded)."""
        target = self.factory.__init__ if inspect.isclass(self.factory) else self.factory
        return [name for name, p in inspect.signature(target).parameters.items()
                if name not in ("self", "model")
                and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


REGISTRY: dict[str, EstimatorKind] = {}


def register_estimator(name: str, description: str, needs_checkpoint: bool = False
                       ) -> Callable[[Callable[..., Estimator]], Callable[..., Estimator]]:
    """Decorator registering an estimator class or factory under ``name``."""
    def decorate(factory: Callable[..., Estimator]) -> Callable[..., Estimator]:
        if name in REGISTRY and REGISTRY[name].factory is not factory:
            raise ValueError(f"estimator {name!r} is already registered")
        REGISTRY[name] = EstimatorKind(name, factory, description, needs_checkpoint)
        return factory
    return decorate


def _registry() -> dict[str, EstimatorKind]:
    """The registry, after importing every module of the :mod:`crbnet.estimators` package
    once (each built-in registers itself from its own module, so a new one is a new file and
    nothing else). The modules are found beside this one, by path: the package itself is not
    imported from here (it imports this module)."""
    package = __name__.rpartition(".")[0]
    for module in pkgutil.iter_modules([str(Path(__file__).parent)], prefix=f"{package}."):
        importlib.import_module(module.name)
    return REGISTRY


def _adopt(obj: object, spec: str) -> EstimatorKind:
    """An estimator loaded from a plugin, a file or a module: an :class:`EstimatorKind`, a
    class or factory registered with :func:`register_estimator`, or a plain estimator class or
    factory ``factory(model, **options)`` (its docstring's first line describes it; a class
    attribute ``needs_checkpoint = True`` marks one built from a checkpoint). Its name
    becomes ``spec``."""
    if not isinstance(obj, EstimatorKind):
        registered = next((k for k in REGISTRY.values() if k.factory is obj), None)
        if registered is not None:
            obj = registered
        elif callable(obj):
            doc = (getattr(obj, "__doc__", None) or "").strip()
            obj = EstimatorKind(spec, obj, doc.splitlines()[0] if doc else f"estimator from {spec}",
                                bool(getattr(obj, "needs_checkpoint", False)))
        else:
            raise InputError(f"{spec} is not an estimator class or factory")
    return replace(obj, name=spec)


#: The estimators' extension point (:mod:`crbnet.plugins`): registered kinds, entry points in
#: ``crbnet.estimators``, ``FILE.py:NAME``, ``package.module:NAME``.
PLUGINS = plugins.ExtensionPoint("method", plugins.GROUPS["estimator"], _registry, _adopt,
                                 error=InputError, item="estimator")


def names(needs_checkpoint: bool | None = None) -> list[str]:
    """Registered and installed plugin estimator names; ``needs_checkpoint=False``: those
    built from the model alone (the ``--method`` choices), True: those built from a
    checkpoint. Read when called: a kind registered later or installed is listed."""
    registry = _registry()
    ordered = sorted(registry, key=lambda n: registry[n].needs_checkpoint)  # stable: model-only first
    listed = [n for n in ordered
              if needs_checkpoint is None or registry[n].needs_checkpoint == needs_checkpoint]
    if needs_checkpoint is not True:        # a plugin's kind is known once it is loaded
        listed += sorted(PLUGINS.plugins())
    return listed


def kind(name: str) -> EstimatorKind:
    """The kind ``name``: registered, an installed plugin's, or ``FILE.py:NAME`` /
    ``package.module:NAME``; one-line :class:`InputError` for an unknown one."""
    return PLUGINS.resolve(name)


def is_method(spec: str) -> bool:
    """Whether ``spec`` names an estimator built from the model alone, or has the form of a
    plugin spec (``FILE.py:NAME``, ``module:NAME``) that is not an existing path: what
    ``--method`` and ``crbnet compare`` take for a method rather than a checkpoint."""
    registry = _registry()
    if spec in registry:
        return not registry[spec].needs_checkpoint
    return (spec in PLUGINS.plugins() or plugins.is_spec(spec)) and not Path(spec).exists()


def accepted(name: str, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``defaults`` that estimator ``name`` takes as options (a default such as
    ``device`` that the built-ins take and an estimator of one's own may not)."""
    return {k: v for k, v in defaults.items() if k in kind(name).option_names}


def get(name: str, model: SignalModel | None, **options: Any) -> Estimator:
    """An estimator of kind ``name`` for ``model``, configured by ``options`` (the factory's
    keyword arguments); an unknown option or a bad value is a one-line :class:`InputError`."""
    entry = kind(name)
    accepted = entry.option_names
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise InputError(f"unknown option(s) for {name}: {', '.join(unknown)}; accepted: "
                         f"{', '.join(accepted)}")
    try:
        return entry.factory(model, **options)
    except InputError:
        raise
    except (TypeError, ValueError) as exc:
        raise InputError(f"bad option for {name}: {exc}") from None


class MethodTable(Mapping):
    """Live read-only view ``{name: factory}`` of the kinds built from the model alone."""

    def __getitem__(self, name: str) -> Callable[..., Estimator]:
        if not is_method(name):
            raise KeyError(name)
        entry = kind(name)                 # a plugin spec that does not load: one clear line
        if entry.needs_checkpoint:
            raise KeyError(name)
        return entry.factory

    def __iter__(self) -> Iterator[str]:
        return iter(names(needs_checkpoint=False))

    def __len__(self) -> int:
        return len(names(needs_checkpoint=False))
