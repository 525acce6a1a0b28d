"""Sequence design: minimize the CRB cost over the controls of a sequence, within the hardware
limits, by a bounded quasi-Newton method with exact gradients and several starts."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import scipy.optimize
import torch

from crbnet.design.controls import Controls, DesignSpace, controls_for
from crbnet.design.cost import design_cost, relative_crb
from crbnet.errors import InputError
from crbnet.physics import sequences as seqs
from crbnet.physics.hardware import HardwareLimits
from crbnet.physics.models.base import SignalModel
from crbnet.progress import ProgressBar, ProgressFactory
from crbnet.progress import resolve as resolve_progress
from crbnet.stats.crb import crb


class _OutOfTime(Exception):
    """The time budget ran out inside an optimizer run."""


class _BarClock:
    """Shows the seconds spent of the budget on a progress bar (whole seconds, so a bar
    redraws at most once a second) with the run and best cost as its status."""

    def __init__(self, bar: ProgressBar, total: int) -> None:
        self.bar, self.total, self.shown = bar, total, 0

    def show(self, elapsed: float, status: str) -> None:
        now = min(int(elapsed), self.total)
        if now > self.shown:
            self.bar.set_postfix(ordered_dict={"status": status}, refresh=False)
            self.bar.update(now - self.shown)
            self.shown = now


@dataclass
class DesignResult:
    """What a design run found.

    Attributes:
        sequence: the designed sequence (within the limits).
        x: its optimizer variables (in [0, 1]).
        cost: its cost; ``start_cost`` that of the (feasible version of the) start.
        history: one entry per cost evaluation: elapsed s, run index, cost, best so far.
        runs: per start: its kind ('start' or 'random'), first and final cost, evaluations.
    """

    sequence: seqs.Sequence
    x: np.ndarray
    cost: float
    start_cost: float
    history: list[dict] = field(default_factory=list)
    runs: list[dict] = field(default_factory=list)
    elapsed: float = 0.0


class SequenceDesigner:
    """Find the sequence of the model's kind that minimizes the CRB cost at tissue points.

    Args:
        model: the signal model; its sequence is the start (and fixes what is not designed).
        points: [N, P] tissue points in the model's estimated parameters (SI).
        snr: |M0| / σ of the design (the cost scales with 1/SNR²; it does not move the optimum).
        weights: per estimated parameter (default 1 each).
        space: limits and controls (:class:`DesignSpace`).
        starts: optimizer runs: the first from the start sequence (unless ``random_only``),
            the others from random controls drawn with ``seed``.
        random_only: every run starts from random controls; the start sequence then only
            provides what is not designed (TR, number of TRs, inversion, ...).
        max_minutes: wall-time budget of all runs together.
        max_iterations: quasi-Newton iterations per run.
        progress: a bar over the time budget, s (:mod:`crbnet.progress`; None: none).
    """

    def __init__(self, model: SignalModel, points: torch.Tensor, snr: float = 50.0,
                 weights: dict[str, float] | None = None, space: DesignSpace | None = None,
                 starts: int = 4, max_minutes: float = 10.0, max_iterations: int = 2000,
                 seed: int = 0, random_only: bool = False,
                 progress: ProgressFactory | None = None) -> None:
        if not (math.isfinite(snr) and snr > 0):
            raise InputError(f"the SNR must be a positive number, got {snr!r}")
        if starts < 1 or not max_minutes > 0 or max_iterations < 1:
            raise InputError("starts, max_minutes and max_iterations must be positive")
        model.check_theta(points)
        self.model, self.points, self.snr = model, points.to(torch.float64), float(snr)
        self.weights = self._weights(weights or {})
        self.space = space or DesignSpace(limits=HardwareLimits())
        self.controls: Controls = controls_for(model, self.space)
        self._check_contract()
        self.starts, self.max_minutes, self.max_iterations = starts, max_minutes, max_iterations
        self.seed, self.random_only, self.progress = seed, random_only, progress

    def _weights(self, weights: dict[str, float]) -> torch.Tensor:
        for name, w in weights.items():
            if name not in self.model.parameters:
                raise InputError(f"weight for {name!r}, which is not estimated; estimated: "
                                 f"{', '.join(self.model.parameters)}")
            if not (math.isfinite(w) and w >= 0):
                raise InputError(f"the weight of {name} must be a non-negative number")
        out = torch.tensor([float(weights.get(p, 1.0)) for p in self.model.parameters],
                           dtype=torch.float64)
        if not out.sum() > 0:
            raise InputError("at least one weight must be positive")
        return out

    def _check_contract(self) -> None:
        """One call of the model's ``signal_for_sequence`` on the start's played arrays: a
        finite [N, T] tensor, and real up to the model's ``real_signal_phase`` where it
        declares one (design would otherwise drop a part of the signal silently)."""
        x0 = torch.as_tensor(self.controls.initial(), dtype=torch.float64)
        with torch.no_grad():
            signal = self.model.signal_for_sequence(self.points, self.controls.played(x0))
        expected = (self.points.shape[0], self.model.n_timepoints)
        name = self.model.name
        if not torch.is_tensor(signal) or tuple(signal.shape) != expected:
            got = list(signal.shape) if torch.is_tensor(signal) else type(signal).__name__
            raise InputError(f"{name}.signal_for_sequence must return a tensor {list(expected)} "
                             f"(points × time points), got {got}")
        if not torch.isfinite(torch.view_as_real(signal) if signal.is_complex() else signal).all():
            raise InputError(f"{name}.signal_for_sequence gives NaN or Inf at the design points")
        phase = self.model.real_signal_phase
        if phase is not None and signal.is_complex():
            residual = (signal * complex(phase).conjugate()).imag.abs().max()
            if residual > 1e-9 * signal.abs().max():
                raise InputError(f"{name} declares real_signal_phase {phase} but its signal is "
                                 "not that phase times a real signal")

    # ---- cost --------------------------------------------------------------------------------
    def cost(self, x: torch.Tensor) -> torch.Tensor:
        """The design cost of variables ``x`` (differentiable)."""
        signal, columns = self.controls.signal_and_jacobian(self.model, self.controls.played(x),
                                                            self.points)
        return design_cost(relative_crb(signal, columns, self.points, 1 / self.snr),
                           self.weights)

    def cost_and_gradient(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        """Cost and its exact gradient (reverse mode through the Jacobian, the Fisher matrix
        and its inverse)."""
        xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        with torch.enable_grad():
            value = self.cost(xt)
            (grad,) = torch.autograd.grad(value, xt)
        return float(value.detach()), grad.numpy()

    def relative_std(self, sequence: seqs.Sequence) -> np.ndarray:
        """√CRB / θ [N, P] of a sequence at the design points (crbnet.crb, independent of the
        differentiable route)."""
        model = type(self.model)(sequence=sequence, fixed=self.model.fixed,
                                 **self.model.option_values)
        var = crb(model, self.points, sigma=1 / self.snr, warn=False)
        return (var.sqrt() / self.points.abs()).numpy()

    # ---- optimization --------------------------------------------------------------------------
    def fit(self) -> DesignResult:
        """Run the starts within the time budget and return the best design.

        Runs with one intra-op thread (restored afterwards): the design's tensors are tiny, so
        a second thread only adds hand-offs — measured 3× slower per cost evaluation with 2
        threads on a busy 2-core machine."""
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self._fit()
        finally:
            torch.set_num_threads(threads)

    def _fit(self) -> DesignResult:
        rng = np.random.default_rng(self.seed)
        t0 = time.perf_counter()
        budget = 60.0 * self.max_minutes
        x_start = self.controls.initial()
        start_cost = self.cost_and_gradient(x_start)[0]
        if not self.random_only and not (math.isfinite(start_cost) and start_cost > 0):
            raise InputError(f"the Fisher matrix of {self.model.name} is singular on the start "
                             "sequence at the design points: a parameter cannot be told apart "
                             "there (fix it with --fix, or choose other points or a start)")
        # With random starts only, the start sequence is not a candidate.
        best = {"x": x_start, "cost": math.inf if self.random_only else start_cost}
        history: list[dict] = []
        runs: list[dict] = []
        with resolve_progress(self.progress)(total=round(budget), unit="s",
                                             desc="design") as bar:
            clock = _BarClock(bar, round(budget))
            for run in range(self.starts):
                remaining = budget - (time.perf_counter() - t0)
                if remaining <= 0:
                    break
                x0 = x_start if run == 0 and not self.random_only else self.controls.random(rng)
                deadline = time.perf_counter() + remaining / (self.starts - run)
                runs.append(self._run(run, x0, deadline, t0, best, history, clock))
        return DesignResult(sequence=self.controls.sequence(best["x"]), x=best["x"],
                            cost=best["cost"], start_cost=start_cost, history=history,
                            runs=runs, elapsed=time.perf_counter() - t0)

    def _run(self, run: int, x0: np.ndarray, deadline: float, t0: float, best: dict,
             history: list[dict], clock: _BarClock) -> dict:
        """One bounded L-BFGS run on log(cost) until convergence or the deadline."""
        record = {"start": "random" if run or self.random_only else "start", "first_cost": None,
                  "final_cost": math.inf, "evaluations": 0}

        def objective(x: np.ndarray) -> tuple[float, np.ndarray]:
            if time.perf_counter() > deadline:
                raise _OutOfTime
            value, grad = self.cost_and_gradient(x)
            record["evaluations"] += 1
            if record["first_cost"] is None:
                record["first_cost"] = value
            if not (math.isfinite(value) and value > 0 and np.all(np.isfinite(grad))):
                return 1e30, np.zeros_like(x)               # singular Fisher: step back
            if value < record["final_cost"]:
                record["final_cost"] = value
            if value < best["cost"]:
                best["x"], best["cost"] = x.copy(), value
            elapsed = time.perf_counter() - t0
            history.append({"elapsed": elapsed, "run": run, "cost": value, "best": best["cost"]})
            clock.show(elapsed, f"run {run + 1}/{self.starts} best {best['cost']:.4g}")
            return math.log(value), grad / value

        try:
            outcome = scipy.optimize.minimize(
                objective, x0, jac=True, method="L-BFGS-B", bounds=[(0.0, 1.0)] * x0.size,
                options={"maxiter": self.max_iterations, "ftol": 1e-12, "gtol": 1e-9,
                         "maxcor": 30})
            record["stopped"] = str(outcome.message)
        except _OutOfTime:
            record["stopped"] = "time budget"
        return record

