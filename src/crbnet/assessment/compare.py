"""Side-by-side comparison of estimators (networks, NLLS, dictionary) on the same test signals.

Test set: N parameter points drawn from the model's training distribution, |M0| = 1 with a
uniformly random phase, complex white Gaussian noise with σ = 1/SNR on the real and on the
imaginary part — the same noisy signals for every estimator. Per estimator and parameter the
table reports the mean over voxels of ``(θ̂ − θ)² / CRB(θ)`` (CRB of that voxel at that σ;
1 for an efficient unbiased estimator — the seed paper's loss used as a metric), its median,
and the inference speed (``predict`` calls only, after an untimed warm-up). Optionally, the
value of registered training losses (:mod:`crbnet.learning.losses`; ``mse`` with the default weights
1/width² of the training range) on the same estimates, over voxels with finite estimates.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from crbnet.assessment.evaluate import SNR_DEFINITION
from crbnet.assessment.gross_errors import classify_gross_errors
from crbnet.errors import InputError
from crbnet.estimators.calling import checked_predict, warm_up
from crbnet.files import json_ready
from crbnet.estimators.network import load, require_same_model
from crbnet.estimators.protocol import Estimator, accepted
from crbnet.learning import losses as loss_registry
from crbnet.stats.metrics import crb_normalized, finite_crb
from crbnet.physics.models import same_model
from crbnet.physics.models.base import SignalModel
from crbnet.stats.crb import SingularFisherWarning, crb
from crbnet.stats.noise import noisy_measurements
from crbnet.stats.sampling import ParameterSampler

#: Search boxes of a baseline: the model's physical bounds or the networks' training ranges.
BOXES = ("physical", "training")


def split_method(spec: str) -> tuple[str, str | None] | None:
    """``'nlls'`` -> ('nlls', None), ``'nlls@training'`` -> ('nlls', 'training'); None when
    ``spec`` is not a baseline."""
    from crbnet.estimators import METHODS

    method, _, box = spec.partition("@")
    if method not in METHODS:
        return None
    if box and box not in BOXES:
        raise InputError(f"{spec!r}: the box after @ must be one of {', '.join(BOXES)}")
    return method, box or None


def training_ranges(model: SignalModel, networks: Sequence[Estimator] = ()
                    ) -> dict[str, tuple[float, float]]:
    """The training ranges (SI): those recorded in the first network's checkpoint, else the
    model's defaults."""
    for net in networks:
        sampling = (getattr(net, "info", None) or {}).get("sampling")
        if sampling:
            return {p: tuple(float(v) for v in sampling[p]["range"]) if p in sampling
                    else model.spec(p).train_range for p in model.parameters}
    return {p: tuple(model.spec(p).train_range) for p in model.parameters}


def box_options(method: str, model: SignalModel, box: str | None,
                ranges: Mapping[str, tuple[float, float]]) -> dict[str, Any]:
    """Constructor options confining a baseline to ``box``: NLLS searches the model's bounds
    by default (``bounds``), the dictionary spans the training ranges (``ranges``)."""
    if box is None:
        return {}
    target = dict(ranges) if box == "training" else dict(model.bounds)
    return {"bounds": target} if method == "nlls" else {"ranges": target}


# ---- building estimators from command-line style specifications ---------------------------
def resolve_estimators(specs: Sequence[str], model: SignalModel | None = None,
                       device: torch.device | str | None = None,
                       baseline_options: dict[str, dict[str, Any]] | None = None,
                       basis: torch.Tensor | None = None,
                       ) -> tuple[SignalModel, list[tuple[str, Estimator]]]:
    """Turn ``'nlls'``, ``'dictionary'`` or checkpoint paths / run directories into labelled
    estimators sharing one model (from the first checkpoint, else ``model``). A method may
    carry its search box: ``'nlls@training'`` (the networks' training ranges) or
    ``'nlls@physical'`` (the model's bounds).

    With ``basis`` (a user's U [T, K]) every estimator reads the K subspace coefficients: the
    shared model is the :class:`~crbnet.stats.projected.ProjectedModel` (so test signals and
    CRBs are those of the coefficients), networks must have been trained in that basis.

    Raises :class:`InputError` when no model can be determined or a checkpoint was trained
    for another model, sequence or parameter set.
    """
    from crbnet import estimators as baselines

    if not specs:
        raise InputError("give at least one estimator: a checkpoint path, a run directory, "
                         "'nlls' or 'dictionary'")
    networks: dict[int, Estimator] = {}
    for i, spec in enumerate(specs):
        if split_method(spec) is not None:
            continue
        if not Path(spec).exists():
            raise InputError(f"{spec!r} is neither a method ({', '.join(baselines.METHODS)}, "
                             "or FILE.py:NAME) nor an existing checkpoint or run directory")
        networks[i] = load(spec, device=device)
    if model is None:
        if not networks:
            raise InputError("--model is required when no checkpoint is given")
        model = networks[min(networks)].model
    for i, net in networks.items():
        require_same_model(net, model, specs[i])
    if basis is not None:
        from crbnet.stats.projected import ProjectedModel

        model = ProjectedModel(model, basis)
        networks = {i: net.in_basis(basis) for i, net in networks.items()}
    out: list[tuple[str, Estimator]] = []
    used: set[str] = set()
    for i, spec in enumerate(specs):
        if i in networks:
            est = networks[i]
            label = str(getattr(est, "name", "net"))
            if label in used:
                p = Path(spec)
                label = f"{label} ({p.name if p.is_dir() else p.parent.name or p.stem})"
        else:
            method, box = split_method(spec)  # type: ignore[misc]
            options = dict((baseline_options or {}).get(method, {}))
            options.update(box_options(method, model, box,
                                       training_ranges(model, list(networks.values()))))
            if device is not None:
                options = {**accepted(method, {"device": device}), **options}
            est = baselines.get(method, model, **options)
            label = spec
        while label in used:
            label += "'"
        used.add(label)
        out.append((label, est))
    return model, out


def training_snr(estimator: Estimator) -> float | None:
    """The training SNR recorded in a network's checkpoint (geometric mean of a range), or
    None for estimators without one."""
    info = getattr(estimator, "info", None)
    try:
        snr = info["training"]["config"]["data"]["snr"]  # type: ignore[index]
    except (TypeError, KeyError):
        return None
    try:
        if isinstance(snr, (int, float)):
            return float(snr)
        lo, hi = (float(v) for v in snr)
        return math.sqrt(lo * hi)
    except (TypeError, ValueError):
        return None


# ---- the comparison --------------------------------------------------------------------------
@dataclass
class ComparisonSet:
    """Noisy test signals shared by every estimator."""

    theta: torch.Tensor     # [N, P] truth (SI)
    signals: torch.Tensor   # [N, T] complex128
    crb: torch.Tensor       # [N, P] CRB at σ = 1/snr (inf where not identifiable)
    snr: float
    seed: int


def make_comparison_set(model: SignalModel, n: int, snr: float, seed: int = 0) -> ComparisonSet:
    """``n`` voxels from the training distribution at SNR ``snr`` (module docstring)."""
    if n < 1:
        raise InputError("the test set needs at least one voxel")
    if not (math.isfinite(snr) and snr > 0):
        raise InputError(f"SNR must be a positive number, got {snr!r}")
    gen = torch.Generator().manual_seed(seed)
    theta = ParameterSampler(model).sample(n, gen)
    clean = torch.cat([model.simulate(theta[s:s + 4096]) for s in range(0, n, 4096)])
    signals, _ = noisy_measurements(clean, 1.0 / snr, gen)     # |M0| = 1, random phase
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SingularFisherWarning)
        bound = crb(model, theta, sigma=1.0 / snr)
    return ComparisonSet(theta=theta, signals=signals, crb=bound, snr=float(snr), seed=seed)


def timed_predict(estimator: Estimator, signals: torch.Tensor, batch_size: int = 8192
                  ) -> tuple[torch.Tensor, float]:
    """Estimates [N, P] (float64, CPU) and the seconds spent in ``predict`` (after an untimed
    warm-up call on two voxels, which also triggers lazy setup)."""
    warm_up(estimator, signals)
    seconds, out = 0.0, []
    for s in range(0, signals.shape[0], batch_size):
        called = checked_predict(estimator, signals[s:s + batch_size])
        seconds += called.seconds
        out.append(called.theta)
    return torch.cat(out), seconds


def score(estimates: torch.Tensor, test: ComparisonSet, parameters: Sequence[str]
          ) -> dict[str, Any]:
    """MSE/CRB per parameter (mean and median over voxels with a finite CRB and a finite
    estimate), plus counts of excluded voxels."""
    ratio = crb_normalized((estimates - test.theta) ** 2, test.crb)
    usable = finite_crb(test.crb)
    out: dict[str, Any] = {"mse_over_crb": {}, "mse_over_crb_median": {},
                           "n_infinite_crb": {}, "n_failed": {}}
    for j, p in enumerate(parameters):
        ok = usable[:, j] & torch.isfinite(ratio[:, j])
        r = ratio[ok, j]
        out["mse_over_crb"][p] = float(r.mean()) if r.numel() else math.nan
        out["mse_over_crb_median"][p] = float(r.median()) if r.numel() else math.nan
        out["n_infinite_crb"][p] = int((~usable[:, j]).sum())
        out["n_failed"][p] = int((usable[:, j] & ~ok).sum())
    vals = [v for v in out["mse_over_crb"].values() if math.isfinite(v)]
    out["mse_over_crb_mean_over_parameters"] = float(np.mean(vals)) if vals else math.nan
    return out


def gross_error_fractions(model: SignalModel, test: ComparisonSet, estimates: torch.Tensor
                          ) -> dict[str, float]:
    """Fractions of the test voxels off by > 5 √CRB (``gross_fraction``) and of those split
    into ``local_minimum_fraction`` and ``alternative_fraction`` (:mod:`crbnet.assessment.gross_errors`)."""
    kinds = classify_gross_errors(model, test.signals, estimates, test.theta, test.crb)
    return {f"{kind}_fraction": float(flags.double().mean()) for kind, flags in kinds.items()}


def check_losses(names: Sequence[str]) -> list[str]:
    """Registered losses that can score one noisy draw per voxel (not the repeated ones)."""
    for name in names:
        if loss_registry.get(name).repeated:
            raise InputError(f"loss {name!r} needs several noise draws per voxel; the "
                             "comparison has one")
    return list(names)


def loss_values(estimates: torch.Tensor, test: ComparisonSet, model: SignalModel,
                names: Sequence[str]) -> dict[str, float]:
    """Each registered loss in ``names`` over the voxels whose estimates are all finite."""
    ok = torch.isfinite(estimates).all(1)
    widths = {p: hi - lo for p, (lo, hi) in model.train_ranges.items()}
    weights = loss_registry.mse_weights(model.parameters, widths)
    out = {}
    for name in names:
        loss = loss_registry.get(name)
        inputs = loss_registry.LossInputs(estimates[ok], test.theta[ok], test.crb[ok], weights,
                                          options=loss.option_values())
        out[name] = float(loss.compute(inputs))
    return out


@dataclass
class ComparisonResult:
    model: str
    parameters: tuple[str, ...]
    snr: float
    n_voxels: int
    seed: int
    rows: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return json_ready({
            "model": self.model, "parameters": list(self.parameters), "snr": self.snr,
            "snr_definition": SNR_DEFINITION, "n_voxels": self.n_voxels, "seed": self.seed,
            "test_set": "parameters drawn from the model's training distribution; the same "
                        "noisy signals for every estimator",
            "metric": "mse_over_crb = mean over voxels of (estimate - truth)^2 / CRB (1 = "
                      "efficient unbiased); voxels/s counts predict() calls only",
            "gross_errors": "voxels off by > 5 sqrt(CRB) in some parameter; local_minimum: "
                            "their data cost (M0 projected out) is above the truth's; "
                            "alternative: at or below it",
            "rows": self.rows,
        })

    def to_markdown(self) -> str:
        params = list(self.parameters)
        extra = list(self.rows[0].get("losses", {})) if self.rows else []
        head = (["estimator"] + [f"MSE/CRB {p}" for p in params] + extra
                + ["> 5√CRB", "local min.", "voxels/s"])
        lines = [f"Comparison on {self.n_voxels} test voxels of `{self.model}` at SNR "
                 f"{self.snr:g} ({SNR_DEFINITION}). MSE/CRB: mean over voxels of "
                 "(estimate − truth)²/CRB; 1 = efficient unbiased estimator. > 5√CRB: voxels "
                 "off by more than 5 √CRB in some parameter; local min.: those whose fit "
                 "cost is above the truth's (the others are alternative solutions). "
                 "`@training`: search confined to the networks' training ranges.", "",
                 "| " + " | ".join(head) + " |",
                 "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
        for row in self.rows:
            cells = [row["label"]] + [_fmt(row["mse_over_crb"][p]) for p in params]
            cells += [_fmt(row["losses"][name]) for name in extra]
            cells += [f"{100 * row['gross_fraction']:.1f} %",
                      f"{100 * row['local_minimum_fraction']:.1f} %"]
            cells.append(f"{row['voxels_per_second']:,.0f}")
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        """Write ``comparison.json`` and ``comparison.md`` (both or neither; the figure beside
        them: :func:`crbnet.reporting.comparison.write_comparison`)."""
        from crbnet import files

        out_dir = Path(out_dir)
        paths = {"json": out_dir / "comparison.json", "md": out_dir / "comparison.md"}
        with files.atomic_paths(list(paths.values())) as tmps:
            tmp = dict(zip(paths, tmps))
            files.write_json(tmp["json"], self.to_json())
            files.write_text(tmp["md"], self.to_markdown())
        return paths


def _fmt(v: float) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.3g}"


def compare(estimators: Sequence[tuple[str, Estimator]], model: SignalModel | None = None,
            n: int = 1000, snr: float = 100.0, seed: int = 0, batch_size: int = 8192,
            test: ComparisonSet | None = None, losses: Sequence[str] = ()) -> ComparisonResult:
    """Score every ``(label, estimator)`` on one test set (made here unless given), with the
    registered ``losses`` as extra columns."""
    if not estimators:
        raise InputError("nothing to compare")
    losses = check_losses(losses)
    model = model or estimators[0][1].model
    for label, est in estimators:
        if not same_model(est.model, model):
            raise InputError(f"estimator {label!r} is for {est.model!r}, not {model!r}")
    test = test or make_comparison_set(model, n, snr, seed)
    rows = []
    for label, est in estimators:
        estimates, seconds = timed_predict(est, test.signals, batch_size)
        row = {"label": label, "estimator": str(getattr(est, "name", type(est).__name__)),
               **score(estimates, test, model.parameters),
               **gross_error_fractions(model, test, estimates),
               "voxels_per_second": test.signals.shape[0] / seconds if seconds > 0 else math.inf,
               "predict_seconds": seconds}
        if losses:
            row["losses"] = loss_values(estimates, test, model, losses)
        rows.append(row)
    return ComparisonResult(model=model.name, parameters=tuple(model.parameters),
                            snr=test.snr, n_voxels=int(test.signals.shape[0]), seed=test.seed,
                            rows=rows)
