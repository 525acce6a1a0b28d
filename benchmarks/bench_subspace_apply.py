"""Real-data workflow benchmark: ``crbnet apply`` on K subspace-coefficient images versus on the
T-point time series expanded from the same coefficients (``y = U z``), in one run.

Steps: an SVD basis U [T, K] of fisp_mrf over its training ranges (as ``crbnet basis``); a
brain phantom written as coefficient images (as ``crbnet phantom --basis``) and as the expanded
time series; dictionary matching and a CRB-loss network trained in that basis (``crbnet train
--basis``, time-limited); every estimator applied to both files with the same basis (as
``crbnet apply --basis``). Reported:

* speed: seconds of each ``apply`` (from the NIfTI file to the written maps; the dictionary is
  built once beforehand and shared), ratio expanded / coefficients, against the target
  ``T/K × 0.5``; with and without the CRB-std maps (they need the model's Jacobian at every
  voxel, the same work in both paths);
* where the time goes: apply's own seconds per stage (``seconds_by_stage`` of ``apply.json``:
  read — for the time series including the projection on the basis —, estimate, M0/residual,
  signal and CRB, write) for both inputs, and the ratio each stage alone would allow;
* the same ratio for the part of apply whose work depends on the input's representation:
  reading the file (and projecting a time series) plus the estimator itself;
* agreement: the maps of both paths (plain dictionary matching: identical; the dictionary
  refined between its atoms and the network: round-off);
* the work budget: how many µs per brain voxel everything but reading may take for the target
  ratio to be reachable at all, given the measured reading times, next to what the estimator
  alone takes;
* accuracy: median relative error against the phantom truth per tissue and over all tissue
  (WM, GM, lesion, CSF), target < 5 %.

The network is trained for ``--epochs`` epochs of ``--batches-per-epoch`` batches (its
learning-rate schedule runs to the end; ``--train-minutes`` is only a safety stop; 240 × 150
batches reach MSE/CRB ≈ 1.0 on the validation set in about 10 minutes on a quiet 2-core machine,
far longer under load — 10 epochs leave it at ≈ 11 and CSF's T2 28 % low) on T1 ∈ [0.1, 6] s
and T2 ∈ [0.01, 4] s, wider than fisp_mrf's default training ranges (T1 ≤ 5 s, T2 ≤ 2.5 s),
so that CSF (T1 ≈ 4 s, T2 ≈ 2 s) lies inside the range rather than at 96 % of its log width,
where a regression network's estimates tend to be pulled inwards (the training length, not
the range, made the measured difference: a 10-epoch network on these ranges was as far off
at CSF as the earlier one on the default ranges). The dictionary keeps the model's default
grid; it runs twice, refined between its atoms (the default) and plain (``refine=False``).

Usage: ``python benchmarks/bench_subspace_apply.py [--shape 128x128x2] [--k 10] [--epochs 240]``.
Writes ``benchmarks/results/bench_subspace_apply.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"
#: The network's training ranges (module docstring: CSF inside, not at the edge).
NET_SAMPLING = {"T1": {"range": [0.1, 6.0]}, "T2": {"range": [0.01, 4.0]}}
#: apply's stages (``seconds_by_stage``), in the order they run.
STAGES = ("read", "estimate", "m0_residual", "signal_and_crb", "write", "other")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="fisp_mrf")
    p.add_argument("--k", type=int, default=10, help="basis size K (default 10)")
    p.add_argument("--shape", default="128x128x2")
    p.add_argument("--snr", type=float, default=100.0)
    p.add_argument("--epochs", type=int, default=240, help="network training epochs")
    p.add_argument("--batches-per-epoch", type=int, default=150)
    p.add_argument("--train-minutes", type=float, default=60.0,
                   help="safety stop of the network training (minutes)")
    p.add_argument("--checkpoint", default=None,
                   help="a network already trained in this basis (same --k; skips training)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=str(RESULTS / "bench_subspace_apply.json"))
    return p.parse_args(argv)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def read_and_predict(estimator, path: Path, mask: np.ndarray) -> np.ndarray:
    """The part of ``apply`` whose cost depends on the input's representation: read the file
    (projecting a time series on the basis as apply does) and run the estimator on the mask."""
    from crbnet.imaging.apply import as_model_input
    from crbnet.imaging.nifti import NiftiSignals

    source = as_model_input(NiftiSignals(path), estimator.model)
    out = []
    for block in source.blocks():
        data = source.read(block)[mask[block]]
        if data.shape[0]:
            out.append(estimator.predict(data).numpy())
    return np.concatenate(out)


def ratio_if_only_read(stages: dict) -> float:
    """The speed ratio apply would reach if every stage but reading (and projecting) took no
    time: what the data size alone allows."""
    return stages["time_series"].get("read", 0.0) / max(stages["coefficients"].get("read", 0.0),
                                                        1e-9)


def work_budget(stages: dict, target: float, voxels: int) -> dict:
    """µs per brain voxel that all of apply but reading may take for ``target`` to be
    reachable with the measured reading times — (read_series − target · read_coefficients) /
    (target − 1) — next to the coefficient path's estimate stage, its writing (and fixed overhead), and all its
    non-read work."""
    read = {kind: stages[kind].get("read", 0.0) for kind in stages}
    allowed = (read["time_series"] - target * read["coefficients"]) / (target - 1)
    coef = stages["coefficients"]
    rest = sum(v for k, v in coef.items() if k != "read")
    return {"allowed_us_per_voxel": 1e6 * allowed / voxels,
            "estimate_us_per_voxel": 1e6 * coef.get("estimate", 0.0) / voxels,
            "write_and_other_us_per_voxel": 1e6 * (coef.get("write", 0.0)
                                                   + coef.get("other", 0.0)) / voxels,
            "non_read_us_per_voxel": 1e6 * rest / voxels}


def crb_floor(model, phantom) -> dict:
    """Per parameter and tissue: the median over its voxels of √CRB/θ at the truth (the
    phantom's σ and |M0|), and 0.674 times it — the median |error| / θ of an unbiased
    estimator that reaches the CRB (median of |N(0, 1)| = 0.674)."""
    from crbnet.stats.crb import crb

    out: dict = {}
    for tissue, where in phantom.tissue_masks().items():
        theta = torch.from_numpy(np.stack([phantom.truth[p][where] for p in model.parameters],
                                          -1))
        std = crb(model, theta, sigma=phantom.sigma, m0=torch.from_numpy(phantom.m0[where]),
                  warn=False).sqrt().numpy()
        rel = np.median(std / theta.numpy(), 0)
        for j, p in enumerate(model.parameters):
            out.setdefault(p, {})[tissue] = {"sqrt_crb_over_theta": float(rel[j]),
                                             "efficient_median_abs_error": 0.6745 * float(rel[j])}
    return out


def median_errors(maps: dict, phantom, names: dict, signed: bool = False) -> dict:
    """Median |θ̂/θ − 1| (``signed``: median θ̂/θ − 1, the bias) per parameter, per tissue and
    over all tissue."""
    out = {}
    tissues = phantom.tissue_masks()
    for p, name in names.items():
        est, truth = maps[name], phantom.truth[p]
        rel = est / np.where(truth != 0, truth, np.nan) - 1
        rel = rel if signed else np.abs(rel)
        out[p] = {t: float(np.nanmedian(rel[m])) for t, m in tissues.items()}
        out[p]["all tissue"] = float(np.nanmedian(rel[phantom.mask]))
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from crbnet import models
    from crbnet.estimators import DictionaryEstimator
    from crbnet.imaging.apply import apply_to_volume
    from crbnet.imaging.nifti import NiftiSignals, SpatialReference, write_image
    from crbnet.imaging.phantom import make_phantom, parse_shape
    from crbnet.estimators.network import load
    from crbnet.learning.trainer import Trainer
    from crbnet.learning.training_config import build_config
    from crbnet.stats.projected import ProjectedModel
    from crbnet.stats.sampling import ParameterSampler, derived_generator
    from crbnet.stats.subspace import crb_inflation, fit_subspace

    model = models.get(args.model)
    T = model.n_timepoints
    theta_fit = ParameterSampler(model).sample(4096, derived_generator(0, "basis"))
    signals_fit = model.simulate(theta_fit)
    if args.checkpoint:
        # The network's own basis: an SVD redone here may differ in the last bits (thread
        # count, library), which the basis hash would refuse.
        U = load(args.checkpoint).basis
        args.k = U.shape[1]
    else:
        U = fit_subspace(signals_fit, k=args.k).basis
    energy_kept = float((signals_fit.to(torch.complex128) @ U.conj()).abs().square().sum()
                        / signals_fit.abs().square().sum())
    inflation = crb_inflation(model, ParameterSampler(model).sample(
        128, derived_generator(0, "basis-check")), U)
    pm = ProjectedModel(model, U)
    phantom = make_phantom(pm, parse_shape(args.shape), snr=args.snr, seed=0)
    work = Path(tempfile.mkdtemp(prefix="bench_subspace_"))
    ref = SpatialReference(phantom.shape, phantom.affine)
    coef_file, series_file = work / "coefficients.nii.gz", work / "series.nii.gz"
    write_image(coef_file, phantom.signal, ref, dtype=np.complex64)
    expanded = (phantom.signal.reshape(-1, args.k).astype(np.complex128) @ U.numpy().T)
    write_image(series_file, expanded.reshape(phantom.shape + (T,)), ref, dtype=np.complex64)
    del expanded

    print(f"{model.name}: T = {T}, K = {args.k}, energy kept {energy_kept:.8f}, CRB inflation "
          f"{inflation}; phantom {list(phantom.shape)}, {int(phantom.mask.sum())} brain voxels",
          file=sys.stderr)
    stamp = time.perf_counter()

    def say(text: str) -> None:
        print(f"[{time.perf_counter() - stamp:7.1f} s] {text}", file=sys.stderr, flush=True)

    dictionary = DictionaryEstimator(pm, progress=False)
    _, build_s = timed(dictionary.build)
    plain = copy.copy(dictionary)      # the same atoms, matched without refinement
    plain.refine = False
    say(f"dictionary built ({dictionary.n_atoms} atoms)")
    run = Path(args.checkpoint) if args.checkpoint else work / "net"
    cfg = build_config(model, overrides={
        "loss": {"name": "crb"}, "subspace": {"n_check": 16}, "optim": {"epochs": args.epochs},
        "data": {"snr": [30.0, 300.0], "batches_per_epoch": args.batches_per_epoch,
                 "sampling": NET_SAMPLING}})
    train_s = None
    if not args.checkpoint:
        _, train_s = timed(lambda: Trainer(model, cfg, run, max_minutes=args.train_minutes,
                                           log=None, basis=U).fit())
    network = load(run).in_basis(U)
    say("network trained")

    names = {p: model.map_name(p) for p in model.parameters}
    results: dict = {}
    for label, est in (("dictionary", dictionary), ("dictionary_plain", plain),
                       ("network", network)):
        entry: dict = {}
        for uncertainty in (True, False):
            maps, seconds, stages = {}, {}, {}
            for kind, path in (("coefficients", coef_file), ("time_series", series_file)):
                out = work / f"{label}-{kind}-{uncertainty}"
                res, seconds[kind] = timed(lambda: apply_to_volume(
                    est, NiftiSignals(path), out, mask=phantom.mask, uncertainty=uncertainty,
                    progress=False, figure=False))
                maps[kind] = res.maps
                stages[kind] = res.summary["seconds_by_stage"]
                say(f"{label} on {kind} (CRB maps: {uncertainty}): {seconds[kind]:.2f} s "
                    f"{stages[kind]}")
            key = "with_crb_maps" if uncertainty else "no_crb_maps"
            if not uncertainty:
                read_s = {kind: timed(lambda: read_and_predict(est, path, phantom.mask))[1]
                          for kind, path in (("coefficients", coef_file),
                                             ("time_series", series_file))}
                entry["read_and_estimate_only"] = {
                    "seconds": read_s,
                    "speed_ratio": read_s["time_series"] / read_s["coefficients"]}
                entry["work_budget"] = work_budget(stages, T / args.k * 0.5,
                                                   int(phantom.mask.sum()))
                say(f"{label} read + estimate only: {read_s}")
            entry[key] = {"seconds": seconds,
                          "speed_ratio": seconds["time_series"] / seconds["coefficients"],
                          "seconds_by_stage": stages,
                          "stage_ratio": {s: stages["time_series"].get(s, 0.0)
                                          / max(stages["coefficients"].get(s, 0.0), 1e-9)
                                          for s in STAGES},
                          "ratio_if_only_read_remained": ratio_if_only_read(stages)}
            if uncertainty:
                a, b = maps["coefficients"], maps["time_series"]
                entry["maps_identical"] = {n: bool(np.array_equal(a[n], b[n]))
                                           for n in names.values()}
                entry["max_relative_difference"] = {
                    n: float(np.max(np.abs(a[n][phantom.mask] / b[n][phantom.mask] - 1)))
                    for n in list(names.values()) + [f"{n}_CRBstd" for n in names.values()]}
                entry["median_relative_error"] = median_errors(a, phantom, names)
                entry["median_signed_relative_error"] = median_errors(a, phantom, names,
                                                                      signed=True)
                entry["at_range_edge"] = res.summary["voxels"]["at_range_edge"]
        results[label] = entry
        print(label, json.dumps(entry, indent=1), file=sys.stderr)

    summary = {
        "benchmark": "bench_subspace_apply", "model": model.name, "T": T, "K": args.k,
        "target_speed_ratio": T / args.k * 0.5, "shape": list(phantom.shape),
        "brain_voxels": int(phantom.mask.sum()), "snr": args.snr,
        "energy_kept": energy_kept, "crb_inflation": inflation,
        "dictionary_build_s": build_s, "train_s": train_s,
        "train_minutes_limit": args.train_minutes, "network": str(run),
        "network_epochs": len(load(run).info["training"]["metrics"]),
        "network_epochs_planned": args.epochs, "network_sampling": NET_SAMPLING,
        "crb_floor": crb_floor(pm, phantom), "results": results,
        "loadavg": os.getloadavg(), "threads": torch.get_num_threads(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from crbnet.files import write_json

    write_json(out, summary)
    figure(summary, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


def figure(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    labels = list(summary["results"])
    _speed_panel(axes[0], summary, labels)
    _stage_panel(axes[1], summary, labels)
    _error_panel(axes[2], summary, labels)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _speed_panel(ax, summary: dict, labels: list[str]) -> None:
    for i, key in enumerate(("with_crb_maps", "no_crb_maps")):
        for j, label in enumerate(labels):
            s = summary["results"][label][key]["seconds"]
            ax.bar(j * 3 + i, s["coefficients"], color="C0",
                   label="coefficients" if i == j == 0 else None)
            ax.bar(j * 3 + i, s["time_series"] - s["coefficients"], bottom=s["coefficients"],
                   color="C1", label="extra for the time series" if i == j == 0 else None)
    ax.set_xticks([j * 3 + i for j in range(len(labels)) for i in range(2)],
                  [f"{lab.replace('_', chr(10))}\n{'CRB maps' if i == 0 else 'no CRB'}"
                   for lab in labels for i in range(2)], fontsize=7)
    ax.set_ylabel("apply seconds")
    budget = summary["results"][labels[-1]].get("work_budget", {})
    ax.set_title(f"T = {summary['T']}, K = {summary['K']}, {summary['brain_voxels']} voxels "
                 f"(target ratio {summary['target_speed_ratio']:g}: leaves "
                 f"{budget.get('allowed_us_per_voxel', float('nan')):.1f} µs/voxel\nbeyond "
                 f"reading; {labels[-1]} estimate alone "
                 f"{budget.get('estimate_us_per_voxel', float('nan')):.1f} µs/voxel)", fontsize=9)
    ax.legend(fontsize=8)


def _stage_panel(ax, summary: dict, labels: list[str]) -> None:
    """apply's seconds per stage (with CRB maps), coefficients and time series side by side."""
    ticks = []
    for j, label in enumerate(labels):
        stages = summary["results"][label]["with_crb_maps"]["seconds_by_stage"]
        for i, kind in enumerate(("coefficients", "time_series")):
            x, bottom = j * 3 + i, 0.0
            for c, stage in enumerate(STAGES):
                value = stages[kind].get(stage, 0.0)
                ax.bar(x, value, bottom=bottom, color=f"C{c}",
                       label=stage if (i == j == 0) else None)
                bottom += value
            ticks.append((x, f"{label.replace('_', chr(10))}\n{'coef.' if i == 0 else 'series'}"))
    ax.set_xticks([t[0] for t in ticks], [t[1] for t in ticks], fontsize=7)
    ax.set_ylabel("seconds (with CRB maps)")
    ax.set_title("apply's stages", fontsize=9)
    ax.legend(fontsize=7)


def _error_panel(ax, summary: dict, labels: list[str]) -> None:
    errors0 = summary["results"][labels[0]]["median_relative_error"]
    n = len(labels) * len(errors0) + 1
    tissues = list(next(iter(errors0.values())))
    for j, label in enumerate(labels):
        errors = summary["results"][label]["median_relative_error"]
        for i, (p, per) in enumerate(errors.items()):
            ax.bar(np.arange(len(tissues)) * n + j * len(errors) + i,
                   [100 * per[t] for t in tissues], color=f"C{j * len(errors) + i}",
                   label=f"{label} {p}")
    floor = summary.get("crb_floor", {})
    for i, p in enumerate(errors0):
        for t_index, tissue in enumerate(tissues):
            value = floor.get(p, {}).get(tissue, {}).get("efficient_median_abs_error")
            for j in range(len(labels) if value is not None else 0):
                x = t_index * n + j * len(errors0) + i
                ax.plot([x - 0.4, x + 0.4], [100 * value] * 2, color="k", lw=1.0, ls=":")
    ax.axhline(5, color="k", lw=0.8, ls="--")
    ax.set_xticks(np.arange(len(tissues)) * n + (n - 2) / 2, tissues, fontsize=8)
    ax.set_ylabel("median |error| / truth (%)")
    ax.set_title("accuracy (dashed: 5 % target; dotted: CRB floor 0.674·√CRB/θ)", fontsize=9)
    ax.legend(fontsize=7)


if __name__ == "__main__":
    sys.exit(main())
