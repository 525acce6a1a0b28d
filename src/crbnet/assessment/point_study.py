"""Estimator statistics at tissue points, with standard errors, and two estimators compared.

At each point θ (:mod:`crbnet.assessment.points`: a tissue of
:func:`crbnet.physics.tissues.tissue_table`, a row of a CSV file, or a sweep of one parameter
through its training range with the others at a tissue's values) and
each SNR, R noisy measurements are estimated (:func:`crbnet.assessment.evaluate.evaluate`: |M0| = 1,
random phase, σ = 1/SNR). Per point, parameter and SNR, from the n finite estimates:

* ``mean`` (SE s/√n), ``bias = mean − θ`` (same SE), ``|bias|/√CRB`` (SE/√CRB),
  ``relative bias = 100·bias/θ`` in % (SE likewise);
* ``std`` s (ddof 1) and ``std/√CRB``. The SE of s uses the sample fourth central moment m4:
  ``SE(s²) = √((m4 − s⁴·(n−3)/(n−1)) / n)``, ``SE(s) = SE(s²)/(2s)`` (delta method). It does not
  assume Gaussian estimates — NLLS errors have heavy tails where it lands on another solution.

Two estimators are compared on the bias with Welch's unequal-variance t-test on their means
(their noise draws are independent: each estimator gets its own seed), two-sided, with a
Bonferroni correction over all tests made (points × parameters × SNRs): ``p_adjusted =
min(1, m·p)``.

Gross errors: the fraction of a point's realizations off by more than 5 √CRB in some
parameter, split into *local minima* (data cost above the truth's) and *alternative solutions*
(at or below it), as counted by :func:`crbnet.assessment.evaluate.evaluate` with
:mod:`crbnet.assessment.gross_errors`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from crbnet.assessment.gross_errors import GROSS_ERROR_THRESHOLD, KINDS
from crbnet.assessment.points import Points, sweep_points, tissue_points
from crbnet.errors import InputError
from crbnet.files import json_ready
from crbnet.estimators.protocol import Estimator
from crbnet.stats.metrics import crb_normalized
from crbnet.progress import ProgressFactory


# ---- statistics ----------------------------------------------------------------------------
@dataclass
class _Moments:
    """Running power sums of the errors per point and parameter (for the SE of the std)."""

    shape: tuple[int, int]
    sums: list[np.ndarray] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sums = [np.zeros(self.shape) for _ in range(5)]

    def add(self, points: slice, errors: np.ndarray) -> None:
        ok = np.isfinite(errors)
        e = np.where(ok, errors, 0.0)
        self.sums[0][points] += ok.sum(1)
        for k in range(1, 5):
            self.sums[k][points] += (e ** k).sum(1)

    def fourth_central(self) -> np.ndarray:
        n = np.maximum(self.sums[0], 1)
        m1, m2, m3, m4 = (self.sums[k] / n for k in range(1, 5))
        return m4 - 4 * m1 * m3 + 6 * m1 ** 2 * m2 - 3 * m1 ** 4


def point_study(estimator: Estimator, points: Points, snr: float, realizations: int,
                     seed: int = 0, batch_size: int = 8192, classify: bool = True,
                     progress: ProgressFactory | None = None) -> dict[str, Any]:
    """Statistics of one estimator at ``points`` and one SNR (module docstring).

    Returns ``{name: array [G, P]}`` for ``mean, bias, bias_se, std, std_se, crb, n,
    bias_over_sqrt_crb, bias_over_sqrt_crb_se, relative_bias_percent,
    relative_bias_percent_se, std_over_sqrt_crb, std_over_sqrt_crb_se``, plus per point [G]
    ``gross_fraction, local_minimum_fraction, alternative_fraction`` (NaN without
    ``classify``) and ``n_failed``. Memory is bounded by ``batch_size`` voxels: the
    realizations of a point share its clean signal and CRB."""
    from crbnet.assessment.evaluate import evaluate

    G, P = points.theta.shape
    moments = _Moments((G, P))

    def on_block(pts: slice, signals: torch.Tensor, est: np.ndarray) -> None:
        moments.add(pts, est - points.theta[pts].numpy()[:, None, :])

    res = evaluate(estimator, points.theta, snr=snr, realizations=realizations, seed=seed,
                   batch_size=batch_size, progress=progress, on_block=on_block,
                   classify=classify)
    return _derived(res.theta, res.crb, moments, res.gross_counts, res.n_failed, realizations)


def _derived(theta: np.ndarray, crb: np.ndarray, moments: _Moments,
             counts: Mapping[str, np.ndarray] | None, n_failed: np.ndarray,
             realizations: int) -> dict[str, Any]:
    n = moments.sums[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_err = moments.sums[1] / n
        var = (moments.sums[2] - n * mean_err ** 2) / (n - 1)
        var = np.maximum(var, 0.0)
        std = np.sqrt(var)
        bias_se = std / np.sqrt(n)
        m4 = moments.fourth_central()
        var_se = np.sqrt(np.maximum(m4 - var ** 2 * (n - 3) / (n - 1), 0.0) / n)
        std_se = np.where(std > 0, var_se / (2 * std), np.nan)
        root = torch.from_numpy(np.sqrt(crb))

        def per_sqrt_crb(x: np.ndarray) -> np.ndarray:      # NaN where the CRB is not finite
            return crb_normalized(torch.from_numpy(np.asarray(x, dtype=np.float64)), root).numpy()

        out = {
            "theta": theta, "mean": theta + mean_err, "bias": mean_err, "bias_se": bias_se,
            "std": std, "std_se": std_se, "crb": crb, "n": n,
            "bias_over_sqrt_crb": per_sqrt_crb(mean_err),
            "bias_over_sqrt_crb_se": per_sqrt_crb(bias_se),
            "relative_bias_percent": 100 * mean_err / np.abs(theta),
            "relative_bias_percent_se": 100 * bias_se / np.abs(theta),
            "std_over_sqrt_crb": per_sqrt_crb(std), "std_over_sqrt_crb_se": per_sqrt_crb(std_se),
            "n_failed": n_failed,
        }
    for key in KINDS:
        out[f"{key}_fraction"] = (counts[key] / realizations if counts is not None
                                  else np.full(theta.shape[0], np.nan))
    return out


def welch_test(mean_a: np.ndarray, std_a: np.ndarray, n_a: np.ndarray, mean_b: np.ndarray,
               std_b: np.ndarray, n_b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Welch's t statistic, Welch–Satterthwaite degrees of freedom and two-sided p-value for
    equal means of two independent samples given by mean, std (ddof 1) and size."""
    from scipy import stats

    va, vb = std_a ** 2 / n_a, std_b ** 2 / n_b
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (mean_a - mean_b) / np.sqrt(va + vb)
        dof = (va + vb) ** 2 / (va ** 2 / (n_a - 1) + vb ** 2 / (n_b - 1))
    p = 2 * stats.t.sf(np.abs(t), dof)
    return t, dof, p


# ---- the study -----------------------------------------------------------------------------
@dataclass
class PointStudy:
    """Statistics of one or two estimators at named points over several SNRs."""

    model: str
    parameters: tuple[str, ...]
    units: dict[str, str]
    points: Points
    snrs: list[float]
    realizations: int
    labels: list[str]
    stats: dict[str, dict[float, dict[str, Any]]]     # label -> snr -> arrays
    test: dict[float, dict[str, np.ndarray]] | None = None
    n_tests: int = 0
    alpha: float = 0.05

    def rows(self) -> list[dict[str, Any]]:
        """One flat row per estimator, SNR, point and parameter (JSON/table ready)."""
        out = []
        for label in self.labels:
            for snr in self.snrs:
                s = self.stats[label][snr]
                for g, name in enumerate(self.points.names):
                    for j, p in enumerate(self.parameters):
                        row = {"estimator": label, "snr": snr, "point": name, "parameter": p,
                               "value": float(s["theta"][g, j]),
                               "sqrt_crb_over_value": float(math.sqrt(s["crb"][g, j])
                                                            / abs(s["theta"][g, j]))}
                        for key in ("mean", "bias", "bias_se", "bias_over_sqrt_crb",
                                    "bias_over_sqrt_crb_se", "relative_bias_percent",
                                    "relative_bias_percent_se", "std", "std_se",
                                    "std_over_sqrt_crb", "std_over_sqrt_crb_se", "n"):
                            row[key] = float(s[key][g, j])
                        for key in ("gross_fraction", "local_minimum_fraction",
                                    "alternative_fraction"):
                            row[key] = float(s[key][g])
                        if self.test is not None and label == self.labels[0]:
                            t = self.test[snr]
                            row.update(welch_t=float(t["t"][g, j]), welch_p=float(t["p"][g, j]),
                                       welch_p_bonferroni=float(t["p_adjusted"][g, j]))
                        out.append(row)
        return out

    def to_json(self) -> dict:
        return json_ready({
            "model": self.model, "parameters": list(self.parameters), "units": self.units,
            "points": {n: dict(zip(self.parameters, t.tolist()))
                       for n, t in zip(self.points.names, self.points.theta)},
            "sweep": self.points.sweep, "snr": self.snrs, "realizations": self.realizations,
            "estimators": self.labels,
            "snr_definition": "SNR = |M0|/sigma, |M0| = 1, sigma per real/imaginary part",
            "gross_error_threshold_sqrt_crb": GROSS_ERROR_THRESHOLD,
            "welch": None if self.test is None else {
                "what": f"Welch t-test of equal mean estimates, {self.labels[0]} vs "
                        f"{self.labels[1]}, two-sided, Bonferroni over {self.n_tests} tests",
                "alpha": self.alpha},
            "rows": self.rows()})

    def to_markdown(self, snr: float | None = None) -> str:
        """Table at one SNR (default the first): per point and parameter, √CRB/value and each
        estimator's bias/√CRB ± SE and std/√CRB ± SE; then the gross-error fractions."""
        snr = self.snrs[0] if snr is None else float(snr)
        head = ["point", "parameter", "√CRB/value"]
        for label in self.labels:
            head += [f"{label} bias/√CRB", f"{label} std/√CRB"]
        lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
        for g, name in enumerate(self.points.names):
            for j, p in enumerate(self.parameters):
                first = self.stats[self.labels[0]][snr]
                cells = [name, p, f"{math.sqrt(first['crb'][g, j]) / abs(first['theta'][g, j]):.3g}"]
                for label in self.labels:
                    s = self.stats[label][snr]
                    cells += [f"{s['bias_over_sqrt_crb'][g, j]:+.2f} ± "
                              f"{s['bias_over_sqrt_crb_se'][g, j]:.2f}",
                              f"{s['std_over_sqrt_crb'][g, j]:.2f} ± "
                              f"{s['std_over_sqrt_crb_se'][g, j]:.2f}"]
                lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        for label in self.labels:
            s = self.stats[label][snr]
            lines.append(f"- {label}: {100 * float(np.mean(s['gross_fraction'])):.1f} % of the "
                         f"realizations off by > {GROSS_ERROR_THRESHOLD:g} √CRB; local minima "
                         f"{100 * float(np.mean(s['local_minimum_fraction'])):.1f} %, "
                         f"alternative solutions "
                         f"{100 * float(np.mean(s['alternative_fraction'])):.1f} %.")
        return "\n".join(lines) + "\n"

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        """Write ``points.json`` into ``out_dir`` (the figure beside it:
        :func:`crbnet.reporting.points.write_point_study`)."""
        from crbnet import files

        path = Path(out_dir) / "points.json"
        files.write_json(path, self.to_json())
        return {"json": path}


def study(estimators: Sequence[tuple[str, Estimator]], points: Points, snrs: Sequence[float],
          realizations: int = 1000, seed: int = 0, classify: bool = True,
          progress: ProgressFactory | None = None) -> PointStudy:
    """Statistics of each estimator at ``points`` for every SNR; with two or more, the Welch
    test of the first two estimators' biases (module docstring)."""
    if not estimators:
        raise InputError("give at least one estimator")
    if realizations < 2:
        raise InputError("--realizations must be >= 2")
    snrs = [float(s) for s in snrs]
    if not snrs or any(not (math.isfinite(s) and s > 0) for s in snrs):
        raise InputError("SNRs must be positive numbers")
    model = estimators[0][1].model
    stats: dict[str, dict[float, dict[str, Any]]] = {}
    for i, (label, est) in enumerate(estimators):
        stats[label] = {snr: point_study(est, points, snr, realizations,
                                              seed=seed + 7919 * i + 104729 * k,
                                              classify=classify, progress=progress)
                        for k, snr in enumerate(snrs)}
    labels = [label for label, _ in estimators]
    result = PointStudy(model.name, tuple(model.parameters), dict(model.units), points, snrs,
                        realizations, labels, stats)
    if len(labels) >= 2:
        a, b = stats[labels[0]], stats[labels[1]]
        result.n_tests = len(snrs) * points.theta.shape[0] * model.n_parameters
        result.test = {}
        for snr in snrs:
            t, dof, p = welch_test(a[snr]["mean"], a[snr]["std"], a[snr]["n"],
                                   b[snr]["mean"], b[snr]["std"], b[snr]["n"])
            result.test[snr] = {"t": t, "dof": dof, "p": p,
                                "p_adjusted": np.minimum(1.0, p * result.n_tests)}
    return result


__all__ = ["Points", "PointStudy", "tissue_points", "sweep_points", "point_study",
           "welch_test", "study", "GROSS_ERROR_THRESHOLD"]
