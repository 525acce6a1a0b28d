"""Training losses (docs/statistics.md §4). Learning only: no physics here.

Notation: N samples, P parameters, estimate ``θ̂`` [N, P], truth ``θ`` [N, P], ``CRB`` [N, P] the
Cramér–Rao bound of each sample at *its training noise level* (``crb_unit·σ²/|M0|²``).

* :func:`mse` — ``mean_{i,p} w_p·(θ̂_ip − θ_ip)²``; ``w`` optional per-parameter weights (the
  hand-tuned classic; the trainer uses ``w_p = 1/width_p²`` of the training range by default so
  that parameters with small units are not ignored).
* :func:`crb` — the seed paper's loss: ``mean_{i,p} (θ̂_ip − θ_ip)² / CRB_ip``. An efficient
  unbiased estimator scores 1, whatever the parameter or the noise level.
* :func:`relative_mse` — ``mean_{i,p} (θ̂_ip − θ_ip)² / θ_ip²`` (entries with θ = 0 left out);
  a baseline of the seed paper, unaware of the noise level.
* :func:`log_mse` — ``mean_{i,p} (log θ̂_ip − log θ_ip)²``, estimates clamped to a tiny positive
  number first (a network's output range may reach slightly below zero); the other baseline.
* :func:`bias_reduced` — after Mao, Flassbeck & Assländer (arXiv 2312.11468). Each noiseless
  sample is measured R times with independent noise (R "realizations"); with ``θ̄_ip`` the mean
  and ``v_ip`` the unbiased variance (divisor R−1) of its R estimates::

      L = mean_{i,p} (θ̄_ip − θ_ip)² / CRB_ip  +  λ · mean_{i,p} max(0, v_ip / CRB_ip − δ)

  The first term is the CRB-normalized squared bias (its expectation is bias²/CRB + v/(R·CRB):
  the sample mean of R estimates still carries 1/R of their variance). The second term only
  penalizes variance above δ times the bound (δ = 1: an unbiased estimator cannot go below the
  bound, so that part is not a defect). Both means run over the same entries, so the sum equals
  the mean of the summed terms. The paper fine-tunes a CRB-loss network with R = 200, λ = 1,
  δ = 1. Training-config defaults: R = 8, λ = 0.1, δ = 1. Measured on t2_decay at SNR 10
  (docs/training.md §8): λ = 0 and 0.1 gave the smallest bias (mean |bias|/√CRB 0.04 on a
  grid, vs 0.13 for the CRB loss), λ = 1 0.09, and λ = 10 pushed the variance below the bound
  at the price of a large bias (0.50).

Entries whose CRB is infinite (parameter not identifiable in that sample) are left out of the
means: no finite error is "bad" there.

Every loss is registered once in :data:`REGISTRY` (:func:`register`): the name that configs,
``crbnet train --loss``, ``crbnet compare --losses`` and ``crbnet demo --losses`` use, and how
to call it on a batch (:class:`LossInputs`). Adding a loss is one function and one
``@register`` adapter. A loss of one's own needs no change here: :func:`get` also finds
installed plugins (entry-point group ``crbnet.losses``) and ``FILE.py:NAME`` /
``package.module:NAME`` (:mod:`crbnet.plugins`); a loss may declare settings
(:class:`LossOption`, read from :attr:`LossInputs.options`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

import torch

from crbnet import plugins
from crbnet.errors import InputError
from crbnet.options import Option
# The CRB-unit metrics live in stats; they stay importable from here (in __all__).
from crbnet.stats.metrics import crb_normalized, crb_ratio_per_parameter, finite_crb, finite_mean


def mse(estimate: torch.Tensor, target: torch.Tensor,
        weights: torch.Tensor | Sequence[float] | None = None) -> torch.Tensor:
    """``mean_{i,p} w_p (θ̂_ip − θ_ip)²`` (``w = 1`` when ``weights`` is None)."""
    sq = (estimate - target) ** 2
    if weights is not None:
        sq = sq * torch.as_tensor(weights, dtype=sq.dtype, device=sq.device)
    return sq.mean()


def crb(estimate: torch.Tensor, target: torch.Tensor, crb: torch.Tensor) -> torch.Tensor:
    """``mean_{i,p} (θ̂_ip − θ_ip)² / CRB_ip`` over entries with a finite CRB."""
    crb = crb.to(estimate.dtype)        # an overflow to inf in a float32 CRB leaves it out
    return finite_mean(crb_normalized((estimate - target) ** 2, crb), finite_crb(crb))


def relative_mse(estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``mean_{i,p} (θ̂_ip − θ_ip)² / θ_ip²`` over entries with θ ≠ 0."""
    nonzero = target != 0
    safe = torch.where(nonzero, target, torch.ones_like(target))
    return finite_mean(((estimate - target) / safe) ** 2, nonzero)


def log_mse(estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``mean_{i,p} (log θ̂_ip − log θ_ip)²`` over entries with θ > 0; θ̂ is clamped to the
    smallest positive normal number of its dtype before the log."""
    positive = target > 0
    tiny = torch.finfo(estimate.dtype).tiny
    log_ratio = (torch.log(estimate.clamp_min(tiny))
                 - torch.log(torch.where(positive, target, torch.ones_like(target))))
    return finite_mean(log_ratio ** 2, positive)


def bias_reduced(estimates: torch.Tensor, target: torch.Tensor, crb: torch.Tensor,
                 lam: float = 0.1, delta: float = 1.0) -> torch.Tensor:
    """Bias-reduced loss (module docstring).

    Args:
        estimates: [N, R, P] estimates of R noisy measurements of each of N noiseless samples.
        target: [N, P] true parameters (shared by the R realizations).
        crb: [N, P] CRB at the training noise level of each sample (shared likewise).
        lam: weight λ of the variance-excess term.
        delta: variance allowed before the penalty starts, in units of the CRB.
    """
    if estimates.ndim != 3 or estimates.shape[1] < 2:
        raise ValueError("bias_reduced needs estimates of shape [N, R, P] with R >= 2")
    crb = crb.to(estimates.dtype)
    mean = estimates.mean(1)
    var = estimates.var(1, unbiased=True)
    bias_term = crb_normalized((mean - target) ** 2, crb)
    excess = torch.relu(crb_normalized(var, crb) - delta)
    return finite_mean(bias_term + lam * excess, finite_crb(crb))


# ---- the registry --------------------------------------------------------------------------
@dataclass
class LossInputs:
    """What a loss may use for one batch.

    The trainer computes losses in scaled units: θ divided by the width of each parameter's
    training range, the CRB by its square (CRB ratios and relative errors are unchanged).

    Attributes:
        estimate: [N, P] estimates; for a ``repeated`` loss, N = n·K with the K noisy draws
            of each noiseless sample in consecutive rows.
        target: [N, P] true parameters (rows repeated K times likewise).
        crb: [N, P] CRB of each row at its own noise level.
        weights: [P] MSE weights (1/SI²).
        K: noise draws per noiseless sample (1 unless the loss is ``repeated``).
        lam: weight λ of the bias-reduced loss's variance term.
        delta: variance (CRB units) the bias-reduced loss allows before penalizing.
        options: the loss's declared options (:attr:`Loss.options`), every one with a value
            (the declared default where none was given).
    """

    estimate: torch.Tensor
    target: torch.Tensor
    crb: torch.Tensor
    weights: torch.Tensor | Sequence[float] | None = None
    K: int = 1
    lam: float = 0.1
    delta: float = 1.0
    options: Mapping[str, Any] = field(default_factory=dict)


class LossOption(Option):
    """A setting a loss declares (``--loss-option name=value``, ``[loss] options`` in a
    config file); the loss reads it from :attr:`LossInputs.options`."""

    what = "loss option"


@dataclass(frozen=True)
class Loss:
    """A registered loss.

    Attributes:
        name: the name configs and the CLI use (for a loss from a file or module, the spec it
            was loaded by, e.g. ``my_loss.py:relative_l1``, so that a run records how to load
            it again).
        compute: ``LossInputs -> scalar tensor``.
        description: one line for help texts and reports.
        crb_units: whether its value is in CRB units (1 = efficient unbiased).
        repeated: whether it needs K noise draws of each noiseless sample.
        options: the settings it declares (:class:`LossOption`).
    """

    name: str
    compute: Callable[[LossInputs], torch.Tensor]
    description: str
    crb_units: bool = False
    repeated: bool = False
    options: tuple[LossOption, ...] = ()

    def option_values(self, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Every declared option's value: ``given`` (converted with the declared type) over
        the defaults; an undeclared name is a one-line :class:`~crbnet.errors.InputError`."""
        declared = {o.name: o for o in self.options}
        unknown = sorted(set(given or {}) - set(declared))
        if unknown:
            raise InputError(f"loss {self.name!r} has no option(s) {', '.join(unknown)}; "
                             f"declared: {', '.join(declared) or 'none'}")
        return {name: option.convert((given or {})[name]) if name in (given or {})
                else option.default for name, option in declared.items()}


REGISTRY: dict[str, Loss] = {}


def register(name: str, description: str, *, crb_units: bool = False, repeated: bool = False,
             options: tuple[LossOption, ...] = ()
             ) -> Callable[[Callable[[LossInputs], torch.Tensor]],
                           Callable[[LossInputs], torch.Tensor]]:
    """Decorator: register ``compute(inputs: LossInputs) -> tensor`` as loss ``name``."""
    def decorate(compute: Callable[[LossInputs], torch.Tensor]
                 ) -> Callable[[LossInputs], torch.Tensor]:
        if name in REGISTRY:
            raise ValueError(f"loss {name!r} is registered twice")
        REGISTRY[name] = Loss(name, compute, description, crb_units, repeated, tuple(options))
        return compute
    return decorate


def _adopt(obj: object, spec: str) -> Loss:
    """A loss loaded from a plugin, a file or a module: a :class:`Loss`, a function registered
    with :func:`register`, or a plain function ``compute(inputs) -> tensor`` (its docstring's
    first line describes it). Its name becomes ``spec``."""
    if not isinstance(obj, Loss):
        registered = next((loss for loss in REGISTRY.values() if loss.compute is obj), None)
        if registered is not None:
            obj = registered
        elif callable(obj) and not isinstance(obj, type):
            doc = (getattr(obj, "__doc__", None) or "").strip()
            obj = Loss(spec, obj, doc.splitlines()[0] if doc else f"loss from {spec}")
        else:
            raise InputError(f"{spec} is neither a crbnet Loss nor a function of LossInputs")
    return replace(obj, name=spec)


#: The losses' extension point (:mod:`crbnet.plugins`): registered losses, entry points in
#: ``crbnet.losses``, ``FILE.py:NAME``, ``package.module:NAME``.
PLUGINS = plugins.ExtensionPoint("loss", plugins.GROUPS["loss"], lambda: REGISTRY, _adopt,
                                 error=InputError, item="loss")


def names() -> list[str]:
    """Registered losses, then installed plugin losses (entry-point group ``crbnet.losses``):
    read when called, so a loss registered later is listed."""
    return PLUGINS.names()


def get(name: str) -> Loss:
    """The loss ``name``: a registered one, an installed plugin's, or ``FILE.py:NAME`` /
    ``package.module:NAME`` (:mod:`crbnet.plugins`); one-line
    :class:`~crbnet.errors.InputError` when there is none."""
    return PLUGINS.resolve(name)


@register("mse", "mean of w_p (estimate - truth)^2, w_p = 1/width^2 of the training range")
def _mse_loss(x: LossInputs) -> torch.Tensor:
    return mse(x.estimate, x.target, x.weights)


@register("crb", "mean of (estimate - truth)^2 / CRB (1 = efficient unbiased)", crb_units=True)
def _crb_loss(x: LossInputs) -> torch.Tensor:
    return crb(x.estimate, x.target, x.crb)


@register("bias_reduced", "CRB-normalized squared bias of R draws + lam * variance above "
          "delta * CRB", crb_units=True, repeated=True)
def _bias_reduced_loss(x: LossInputs) -> torch.Tensor:
    P = x.estimate.shape[-1]
    return bias_reduced(x.estimate.reshape(-1, x.K, P), x.target[::x.K], x.crb[::x.K],
                        lam=x.lam, delta=x.delta)


@register("relative_mse", "mean of (estimate - truth)^2 / truth^2")
def _relative_mse_loss(x: LossInputs) -> torch.Tensor:
    return relative_mse(x.estimate, x.target)


@register("log_mse", "mean of (log estimate - log truth)^2")
def _log_mse_loss(x: LossInputs) -> torch.Tensor:
    return log_mse(x.estimate, x.target)


#: The built-in losses' names, a snapshot taken at import (kept for code that reads the old
#: tuple); :func:`names` lists every loss, registered later or installed as a plugin.
LOSSES = tuple(REGISTRY)


def mse_weights(parameters: Sequence[str], scales: Mapping[str, float],
                overrides: Mapping[str, float] | None = None) -> list[float]:
    """Per-parameter MSE weights: ``1/scale²`` unless ``overrides`` gives a weight."""
    overrides = overrides or {}
    return [float(overrides.get(p, 1.0 / float(scales[p]) ** 2)) for p in parameters]


__all__ = ["LOSSES", "REGISTRY", "PLUGINS", "Loss", "LossInputs", "LossOption", "register",
           "names", "get", "mse", "crb",
           "bias_reduced", "relative_mse", "log_mse", "crb_ratio_per_parameter", "mse_weights",
           "finite_crb", "crb_normalized"]
