"""Contract checks for plugin authors: do a model, a loss, an estimator keep crbnet's contracts?

In the spirit of scikit-learn's ``check_estimator``:

    from crbnet.testing import check_model, check_loss, check_estimator
    check_model(MyModel())                    # in a test of your own
    check_loss("my_loss.py:relative_l1")
    check_estimator(Median(model), model)

Each check runs a list of named contracts on small inputs (a few points, float64 where maths is
checked) and raises :class:`ContractError` — an :class:`AssertionError`, so test runners show it
as a failure — whose message names the object, the contract and what was found. On success it
returns ``{contract: "passed" | "skipped: why"}``. What each contract means: docs/models.md
("Checking a plugin").
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping
from typing import Any, Callable

import numpy as np
import torch

from crbnet.errors import InputError
from crbnet.learning import losses as loss_registry
from crbnet.physics import sequences
from crbnet.physics.models.base import SignalModel
from crbnet.stats.crb import crb as crb_of
from crbnet.stats.crb import signal_and_jacobian


class ContractError(AssertionError):
    """A plugin breaks one of crbnet's contracts (the message names which)."""


def _require(condition: bool, who: str, contract: str, detail: str) -> None:
    if not condition:
        raise ContractError(f"{who}: contract '{contract}' broken: {detail}")


def _run(who: str, contracts: Mapping[str, Callable[[], str | None]]) -> dict[str, str]:
    """Run each contract (a function returning None, or a reason it was skipped); an
    unexpected exception inside one is reported as that contract's failure."""
    report: dict[str, str] = {}
    for name, check in contracts.items():
        try:
            skipped = check()
        except ContractError:
            raise
        except Exception as exc:
            raise ContractError(f"{who}: contract '{name}' broken: raised "
                                f"{type(exc).__name__}: {exc}") from exc
        report[name] = f"skipped: {skipped}" if skipped else "passed"
    return report


def _relative_gap(got: torch.Tensor, want: torch.Tensor) -> float:
    """``‖got − want‖ / ‖want‖`` (absolute where ``want`` is zero)."""
    scale = float(torch.linalg.vector_norm(want))
    gap = float(torch.linalg.vector_norm(got - want))
    return gap / scale if scale > 0 else gap


# ---- models ------------------------------------------------------------------------------------
def inner_points(model: SignalModel, n: int, dtype: torch.dtype = torch.float64
                 ) -> torch.Tensor:
    """[n, P] points spread over the inside of the training ranges (fractions 0.3 … 0.7, each
    parameter at a different fraction so that no two columns move together)."""
    P = model.n_parameters
    rows = []
    for i in range(n):
        fractions = [0.3 + 0.4 * ((i + 0.5 + 0.37 * j) / n % 1.0) for j in range(P)]
        rows.append([lo + f * (hi - lo) for f, (lo, hi) in
                     zip(fractions, model.train_ranges.values())])
    return torch.tensor(rows, dtype=dtype)


def finite_difference_jacobian(model: SignalModel, theta: torch.Tensor,
                               relative_step: float = 1e-6) -> torch.Tensor:
    """∂f/∂θ [N, T, P] by central differences in float64, step ``relative_step`` times
    ``max(|θ_p|, width of its training range / 1000)``."""
    theta = theta.to(torch.float64)
    widths = [hi - lo for lo, hi in model.train_ranges.values()]
    columns = []
    for p in range(model.n_parameters):
        step = relative_step * torch.clamp(theta[:, p].abs(), min=widths[p] / 1000)
        up, down = theta.clone(), theta.clone()
        up[:, p] += step
        down[:, p] -= step
        difference = (model.simulate(up, check=False) - model.simulate(down, check=False))
        columns.append(difference / (2 * step[:, None]))
    return torch.stack(columns, -1)


def fisher_crb(jacobian: torch.Tensor, signal: torch.Tensor) -> torch.Tensor:
    """[N, P] CRB for σ = 1, M0 = 1 as the explicit inverse of ``Re(Jᴴ J)`` over
    (θ, Re M0, Im M0), J [N, T, P] and f [N, T] complex."""
    J = torch.cat((jacobian, signal[..., None], 1j * signal[..., None]), -1)
    fisher = (J.conj().mT @ J).real
    return torch.diagonal(torch.linalg.inv(fisher), dim1=-2, dim2=-1)[:, :-2]


def _check_specs(model: SignalModel, who: str) -> None:
    contract = "parameter specs"
    names = [s.name for s in model.specs]
    _require(bool(model.name) and isinstance(model.name, str), who, contract,
             "the model needs a non-empty name")
    _require(len(set(names)) == len(names), who, contract, f"names repeat: {names}")
    for s in model.specs:
        lo, hi = s.bounds
        t_lo, t_hi = s.train_range
        where = f"parameter {s.name}"
        _require(isinstance(s.unit, str), who, contract, f"{where}: unit must be a string")
        _require(all(math.isfinite(v) for v in (lo, hi, t_lo, t_hi, s.default)), who,
                 contract, f"{where}: bounds, training range and default must be finite")
        _require(lo < hi, who, contract, f"{where}: bounds {s.bounds} must increase")
        _require(lo <= s.default <= hi, who, contract,
                 f"{where}: default {s.default} outside bounds {s.bounds}")
        _require(lo <= t_lo < t_hi <= hi, who, contract,
                 f"{where}: training range {s.train_range} must increase and lie inside "
                 f"the bounds {s.bounds}")
        _require(not s.log_uniform or t_lo > 0, who, contract,
                 f"{where}: a log-uniform training range must be positive")


def _check_describe(model: SignalModel) -> None:
    text = json.dumps(model.describe())
    json.loads(text)
    json.dumps(model.option_values)


def _check_dtypes(model: SignalModel, theta: torch.Tensor, who: str, rtol: float) -> None:
    contract = "dtype"
    wide = model.simulate(theta)
    narrow = model.simulate(theta.to(torch.float32))
    T = model.n_timepoints
    _require(wide.dtype == torch.complex128 and tuple(wide.shape) == (theta.shape[0], T), who,
             contract, f"float64 θ must give complex128 [N, {T}], got {wide.dtype} "
                       f"{list(wide.shape)}")
    _require(narrow.dtype == torch.complex64 and narrow.shape == wide.shape, who, contract,
             f"float32 θ must give complex64 [N, {T}], got {narrow.dtype} {list(narrow.shape)}")
    _require(bool(torch.isfinite(torch.view_as_real(wide)).all()), who, contract,
             "the float64 signal has NaN or Inf")
    gap = float((narrow.to(torch.complex128) - wide).abs().max() / wide.abs().max())
    _require(gap <= rtol, who, contract,
             f"float32 and float64 signals differ by {gap:.2e} of the largest |f| "
             f"(tolerance {rtol:.0e})")


def _check_batch(model: SignalModel, theta: torch.Tensor, who: str) -> None:
    together = model.simulate(theta)
    for i in range(theta.shape[0]):
        alone = model.simulate(theta[i:i + 1])
        gap = _relative_gap(together[i:i + 1], alone)
        _require(gap <= 1e-10, who, "batch",
                 f"row {i} of a batch of {theta.shape[0]} differs from the same point alone "
                 f"by {gap:.2e} (relative); voxels must not influence each other")


def _check_jacobian(model: SignalModel, theta: torch.Tensor, who: str, rtol: float) -> None:
    contract = "Jacobian vs finite differences"
    reference = finite_difference_jacobian(model, theta)
    _, routed = signal_and_jacobian(model, theta)
    candidates = {"crbnet.stats.crb route": routed}
    explicit = model.explicit_signal_and_jacobian(theta)
    if explicit is not None:
        signal, columns = (x if x.is_complex() else torch.complex(x, torch.zeros_like(x))
                           for x in explicit)
        gap = _relative_gap(signal.to(torch.complex128), model.simulate(theta))
        _require(gap <= 1e-10, who, contract,
                 f"explicit_signal_and_jacobian's signal differs from simulate by {gap:.2e}")
        candidates["explicit_signal_and_jacobian"] = columns.permute(1, 2, 0)
    for route, jac in candidates.items():
        for p, name in enumerate(model.parameters):
            gap = _relative_gap(jac[..., p].to(torch.complex128), reference[..., p])
            _require(gap <= rtol, who, contract,
                     f"∂f/∂{name} by the {route} differs from central differences by "
                     f"{gap:.2e} (relative; tolerance {rtol:.0e})")


def _check_crb(model: SignalModel, theta: torch.Tensor, who: str, rtol: float) -> str | None:
    contract = "CRB vs explicit Fisher inverse"
    signal = model.simulate(theta)
    expected = fisher_crb(finite_difference_jacobian(model, theta), signal)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = crb_of(model, theta)
    usable = torch.isfinite(got)
    if not usable.any():
        return "the CRB is infinite at every checked point (choose identifiable points)"
    gap = ((got - expected).abs() / expected.abs())[usable].max()
    _require(bool(gap <= rtol), who, contract,
             f"crbnet.crb differs from the inverse of Re(JᴴJ) built from finite differences "
             f"by {float(gap):.2e} (relative; tolerance {rtol:.0e})")
    return None


def _check_device(model: SignalModel, theta: torch.Tensor, who: str) -> str | None:
    if not torch.cuda.is_available():
        return "CUDA is not available"
    on_gpu = model.simulate(theta.to("cuda"))
    _require(on_gpu.device.type == "cuda", who, "device",
             f"θ on CUDA gave a signal on {on_gpu.device}")
    gap = _relative_gap(on_gpu.cpu(), model.simulate(theta))
    _require(gap <= 1e-8, who, "device", f"CUDA and CPU signals differ by {gap:.2e}")
    return None


def _own_sequence_arrays(model: SignalModel) -> dict[str, torch.Tensor]:
    """The numeric array fields of the model's own sequence, as float64 tensors."""
    out = {}
    for key, value in model.sequence.to_dict().items():
        if isinstance(value, list) and value and all(
                isinstance(v, (int, float)) and not isinstance(v, bool)
                for v in np.ravel(np.asarray(value, dtype=object))):
            out[key] = torch.tensor(value, dtype=torch.float64)
    return out


def _check_signal_for_sequence(model: SignalModel, theta: torch.Tensor, who: str,
                               played: Mapping[str, torch.Tensor] | None) -> str | None:
    contract = "signal_for_sequence"
    if type(model).signal_for_sequence is SignalModel.signal_for_sequence:
        return "the model does not offer signal_for_sequence (it cannot be designed)"
    arrays = {k: v.detach().clone().requires_grad_(True)
              for k, v in (played or _own_sequence_arrays(model)).items()}
    signal = model.signal_for_sequence(theta, arrays)
    gap = _relative_gap(signal.detach().to(torch.complex128), model.simulate(theta))
    _require(gap <= 1e-8, who, contract,
             f"playing the model's own sequence arrays ({', '.join(arrays)}) differs from "
             f"simulate by {gap:.2e} (relative)")
    grads = torch.autograd.grad(signal.abs().square().sum(), list(arrays.values()),
                                allow_unused=True)
    flowing = [k for k, g in zip(arrays, grads) if g is not None]
    _require(bool(flowing) and all(bool(torch.isfinite(g).all()) for g in grads
                                   if g is not None), who, contract,
             "no finite gradient reaches the played sequence arrays")
    return None


def check_model(model: SignalModel, *, n_points: int = 2, jacobian_rtol: float = 1e-5,
                crb_rtol: float = 1e-3, float32_rtol: float = 1e-3,
                played: Mapping[str, torch.Tensor] | None = None) -> dict[str, str]:
    """Check a configured signal model against crbnet's model contracts.

    Contracts: parameter specs (names unique, units strings, defaults and training ranges
    inside the bounds); ``describe()`` JSON-serializable; dtype (float32 θ gives complex64,
    float64 complex128 [N, T], the two agree within ``float32_rtol`` of the largest |f|); batch
    (each row of N = 3 equals that point alone); Jacobian vs central finite differences (the
    route :func:`crbnet.crb` takes, and ``explicit_signal_and_jacobian`` where offered; within
    ``jacobian_rtol`` per column, relative); CRB vs the explicit inverse of the Fisher matrix
    built from the finite-difference Jacobian (``crb_rtol``); device (CUDA agrees with CPU;
    skipped without CUDA); ``signal_for_sequence`` where offered (the model's own sequence
    arrays — or ``played`` — reproduce ``simulate`` and a gradient reaches them).
    Jacobian and CRB are checked at ``n_points`` points inside the training ranges.

    Raises :class:`ContractError` naming the first broken contract; returns the report.
    """
    who = f"check_model({getattr(model, 'name', type(model).__name__)})"
    theta = inner_points(model, n_points)
    batch = inner_points(model, 3)
    contracts: dict[str, Callable[[], str | None]] = {
        "parameter specs": lambda: _check_specs(model, who),
        "sequence kind": lambda: _check_kind(model, who),
        "describe() JSON-serializable": lambda: _check_describe(model),
        "dtype": lambda: _check_dtypes(model, batch, who, float32_rtol),
        "batch": lambda: _check_batch(model, batch, who),
        "Jacobian vs finite differences": lambda: _check_jacobian(model, theta, who,
                                                                  jacobian_rtol),
        "CRB vs explicit Fisher inverse": lambda: _check_crb(model, theta, who, crb_rtol),
        "device": lambda: _check_device(model, batch, who),
        "signal_for_sequence": lambda: _check_signal_for_sequence(model, theta, who, played),
    }
    return _run(who, contracts)


def _check_kind(model: SignalModel, who: str) -> None:
    kind = getattr(model.sequence, "kind", None)
    _require(kind in model.accepted_sequence_kinds(), who, "sequence kind",
             f"the model's sequence has kind {kind!r}, the model declares "
             f"{model.accepted_sequence_kinds()}")
    sequences.kind_of(kind)
    _require(model.n_timepoints == model.sequence.n_timepoints > 0, who, "sequence kind",
             "n_timepoints must be positive")


# ---- losses ------------------------------------------------------------------------------------
def _loss_batch(loss: loss_registry.Loss, noise: float, n: int = 6) -> loss_registry.LossInputs:
    """A batch as the trainer builds one: float32 estimates and targets, float64 CRBs, K noise
    draws of each sample in consecutive rows for a repeated loss."""
    K = 4 if loss.repeated else 1
    gen = torch.Generator().manual_seed(3)
    truth = (0.5 + torch.rand(n, 2, generator=gen, dtype=torch.float64)).repeat_interleave(K, 0)
    estimate = truth * (1 + noise * torch.randn(truth.shape, generator=gen, dtype=torch.float64))
    return loss_registry.LossInputs(estimate.float(), truth.float(),
                                    0.01 * torch.ones_like(truth), torch.tensor([1.0, 4.0]),
                                    K=K, options=loss.option_values())


def check_loss(loss: loss_registry.Loss | str, *, zero_at_truth: bool = True
               ) -> dict[str, str]:
    """Check a training loss (a :class:`~crbnet.learning.losses.Loss` or anything
    :func:`crbnet.learning.losses.get` finds) against crbnet's loss contracts.

    Contracts: description (name and a one-line description; option defaults valid); shape
    (a batch [N, P] as the trainer builds it, float32 estimates, gives a real scalar tensor);
    finite (for small and large errors); zero at the truth (perfect estimates cost 0, where
    ``zero_at_truth`` says that is the loss's promise); gradient (backward gives a finite,
    non-zero gradient on the estimates).

    Raises :class:`ContractError` naming the first broken contract; returns the report.
    """
    if isinstance(loss, str):
        loss = loss_registry.get(loss)
    who = f"check_loss({loss.name})"

    def description() -> None:
        _require(bool(loss.name) and bool(loss.description), who, "description",
                 "a loss needs a name and a one-line description")
        loss.option_values()

    def shape() -> None:
        value = loss.compute(_loss_batch(loss, 0.1))
        _require(isinstance(value, torch.Tensor) and value.ndim == 0
                 and value.dtype.is_floating_point, who, "shape",
                 f"must return a real scalar tensor, got {type(value).__name__} "
                 f"{getattr(value, 'shape', '')}")

    def finite() -> None:
        for noise in (0.01, 0.3):
            value = float(loss.compute(_loss_batch(loss, noise)))
            _require(math.isfinite(value), who, "finite",
                     f"value {value} for relative errors of about {noise}")

    def zero() -> str | None:
        if not zero_at_truth:
            return "the loss does not promise 0 at the truth"
        value = float(loss.compute(_loss_batch(loss, 0.0)))
        _require(value == 0.0, who, "zero at the truth", f"perfect estimates cost {value}")
        return None

    def gradient() -> None:
        batch = _loss_batch(loss, 0.2)
        batch.estimate = batch.estimate.clone().requires_grad_(True)
        loss.compute(batch).backward()
        grad = batch.estimate.grad
        _require(grad is not None and bool(torch.isfinite(grad).all())
                 and float(grad.abs().sum()) > 0, who, "gradient",
                 "backward must give a finite, non-zero gradient on the estimates")

    return _run(who, {"description": description, "shape": shape, "finite": finite,
                      "zero at the truth": zero, "gradient": gradient})


# ---- estimators --------------------------------------------------------------------------------
def check_estimator(estimator: Any, model: SignalModel) -> dict[str, str]:
    """Check an estimator of ``model``'s parameters against crbnet's estimator contracts.

    Contracts: interface (``name``, ``parameters`` = the model's, ``predict``); predict
    (complex signals [3, T] of any complex M0, tensor or NumPy array, give a float64 tensor
    [3, P], finite and inside the model's bounds, the same for both input types); signal
    length (signals with a wrong number of time points are refused with an
    :class:`~crbnet.errors.InputError`).

    Raises :class:`ContractError` naming the first broken contract; returns the report.
    """
    who = f"check_estimator({getattr(estimator, 'name', type(estimator).__name__)})"
    theta = inner_points(model, 3)
    m0 = torch.tensor([1.0, 0.5j, -0.8 + 0.6j], dtype=torch.complex128)
    signals = m0[:, None] * model.simulate(theta)

    def interface() -> None:
        _require(isinstance(getattr(estimator, "name", None), str), who, "interface",
                 "an estimator needs a name (str)")
        _require(tuple(estimator.parameters) == tuple(model.parameters), who, "interface",
                 f"parameters {tuple(estimator.parameters)} must be the model's "
                 f"{tuple(model.parameters)}, in its order")
        _require(callable(getattr(estimator, "predict", None)), who, "interface",
                 "an estimator needs predict(signals)")

    def predict() -> None:
        got = estimator.predict(signals)
        P = model.n_parameters
        _require(isinstance(got, torch.Tensor) and got.dtype == torch.float64
                 and tuple(got.shape) == (3, P), who, "predict",
                 f"must return a float64 tensor [3, {P}], got {type(got).__name__} "
                 f"{getattr(got, 'dtype', '')} {list(getattr(got, 'shape', []))}")
        _require(bool(torch.isfinite(got).all()), who, "predict", "estimates contain NaN/Inf")
        for j, (name, (lo, hi)) in enumerate(model.bounds.items()):
            column = got[:, j].cpu()
            _require(bool(((column >= lo) & (column <= hi)).all()), who, "predict",
                     f"estimates of {name} leave the bounds [{lo:g}, {hi:g}]")
        again = estimator.predict(signals.numpy())
        _require(isinstance(again, torch.Tensor) and torch.equal(again.cpu(), got.cpu()), who,
                 "predict", "a NumPy array and a tensor of the same signals give different "
                            "estimates")

    def signal_length() -> None:
        wrong = torch.cat((signals, signals[:, :1]), 1)
        try:
            estimator.predict(wrong)
        except InputError:
            return
        except Exception as exc:
            raise ContractError(f"{who}: contract 'signal length' broken: signals of "
                                f"{wrong.shape[1]} time points (the model has "
                                f"{model.n_timepoints}) raised {type(exc).__name__}, not an "
                                "InputError") from exc
        raise ContractError(f"{who}: contract 'signal length' broken: signals of "
                            f"{wrong.shape[1]} time points were accepted (the model has "
                            f"{model.n_timepoints})")

    return _run(who, {"interface": interface, "predict": predict,
                      "signal length": signal_length})


__all__ = ["ContractError", "check_model", "check_loss", "check_estimator",
           "finite_difference_jacobian", "fisher_crb", "inner_points"]
