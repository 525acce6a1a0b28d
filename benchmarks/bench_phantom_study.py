"""Phantom study: per-tissue accuracy and precision of CRB-net, MSE-net and NLLS on the brain
phantom, against the truth and the Cramér–Rao bound.

Every estimator runs through the same path as ``crbnet apply`` (:func:`crbnet.imaging.apply.
apply_to_volume`, noise level estimated from the data). Per tissue (WM, GM, CSF, lesion) and
parameter the table gives the truth (mean ± std over the tissue's voxels; the spread is the
phantom's smooth within-tissue variation), each estimator's estimates (mean ± std), its error
statistics (bias = mean(θ̂ − θ), std(θ̂ − θ), RMSE) and the CRB reference
``sqrt(mean_v CRB(θ_v; σ, |M0_v|))`` at the truth with the true σ and M0 — an efficient unbiased
estimator has RMSE ≈ that value, so ``RMSE / sqrt(CRB)`` near 1 is the target.

Usage (checkpoints from ``crbnet train``; any of the estimators may be left out)::

    python benchmarks/bench_phantom_study.py --crb-net runs/crb/checkpoint.pt \\
        --mse-net runs/mse/checkpoint.pt --shape 64x64 --snr 50 --out phantom_study
    python benchmarks/bench_phantom_study.py --model fisp_mrf --shape 24x24 --out study_nlls

Writes ``phantom_study.json``, ``phantom_study.md`` and ``phantom_study.png`` in ``--out`` (and
the maps of every estimator in ``--out/maps_<name>``).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--crb-net", metavar="CKPT", help="network trained with the CRB loss")
    p.add_argument("--mse-net", metavar="CKPT", help="network trained with the MSE loss")
    p.add_argument("--net", action="append", default=[], metavar="NAME=CKPT",
                   help="further networks, repeatable")
    p.add_argument("--no-nlls", action="store_true", help="leave NLLS out (it is slow for MT)")
    p.add_argument("--dictionary", action="store_true", help="add dictionary matching")
    p.add_argument("--model", help="signal model when no checkpoint is given (default sequence)")
    p.add_argument("--shape", default="64x64", help="phantom grid (default 64x64)")
    p.add_argument("--snr", type=float, default=50.0,
                   help="SNR = mean |M0| over the brain / sigma (default 50)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-uncertainty", action="store_true",
                   help="skip the CRB maps of the estimates (the CRB reference at the truth "
                        "is still computed)")
    p.add_argument("--device", default=None, help="cpu (default) or cuda")
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument("--out", default="phantom_study", help="output folder (default phantom_study)")
    return p.parse_args(argv)


def load_estimators(args, device):
    """``{label: estimator}`` and the common model."""
    from crbnet import estimators as estimator_registry
    from crbnet import models
    from crbnet.errors import InputError
    from crbnet.estimators import network
    from crbnet.physics.sequences import sequence_hash

    nets = {}
    if args.crb_net:
        nets["CRB-net"] = args.crb_net
    if args.mse_net:
        nets["MSE-net"] = args.mse_net
    for item in args.net:
        name, sep, path = item.partition("=")
        if not sep:
            raise InputError(f"--net expects NAME=CKPT, got {item!r}")
        nets[name] = path
    estimators = {label: network.load(path, device=device) for label, path in nets.items()}
    model = None
    for label, est in estimators.items():
        if model is None:
            model = est.model
        elif (est.model.name, est.model.parameters, sequence_hash(est.model.sequence)) != \
                (model.name, model.parameters, sequence_hash(model.sequence)):
            raise InputError(f"{label} was trained for another model, parameter set or sequence")
    if model is None:
        if not args.model:
            raise InputError("give at least one checkpoint, or --model for classical estimators")
        model = models.get(args.model)
    elif args.model and args.model != model.name:
        raise InputError(f"--model {args.model} differs from the checkpoints' {model.name}")
    if not args.no_nlls:
        estimators["NLLS"] = estimator_registry.get("nlls", model)
    if args.dictionary:
        estimators["dictionary"] = estimator_registry.get("dictionary", model)
    if not estimators:
        raise InputError("no estimator to run")
    return estimators, model


def crb_reference(phantom, device) -> np.ndarray:
    """Per brain voxel CRB variance [N, P] at the truth with the true σ and M0 (inf where the
    Fisher matrix is singular)."""
    from crbnet.stats import crb
    from crbnet.stats.crb import SingularFisherWarning

    model = phantom.model
    theta = torch.from_numpy(np.stack([phantom.truth[p][phantom.mask]
                                       for p in model.parameters], 1)).to(device)
    m0 = torch.from_numpy(phantom.m0[phantom.mask]).to(device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SingularFisherWarning)
        return crb(model, theta, sigma=phantom.sigma, m0=m0, warn=False).cpu().numpy()


def tissue_table(phantom, results, crb_var) -> list[dict]:
    model = phantom.model
    rows = []
    brain = phantom.mask
    for tissue, tmask in phantom.tissue_masks().items():
        in_brain = tmask[brain]
        for j, p in enumerate(model.parameters):
            truth = phantom.truth[p][tmask]
            var = crb_var[in_brain, j]
            row = {"tissue": tissue, "parameter": p, "unit": model.units[p],
                   "n_voxels": int(tmask.sum()),
                   "truth_mean": float(truth.mean()), "truth_std": float(truth.std()),
                   "crb_std": float(math.sqrt(var.mean())) if np.all(np.isfinite(var)) else None,
                   "estimators": {}}
            for label, res in results.items():
                used = res.mask[tmask]
                est = res.maps[model.map_name(p)][tmask][used]
                err = est - truth[used]
                entry = {"n": int(used.sum())}
                if used.any():
                    rmse = float(np.sqrt(np.mean(err ** 2)))
                    entry.update(mean=float(est.mean()), std=float(est.std()),
                                 bias=float(err.mean()), error_std=float(err.std()), rmse=rmse,
                                 rmse_over_crb=(rmse / row["crb_std"]) if row["crb_std"] else None)
                row["estimators"][label] = entry
            rows.append(row)
    return rows


def _fmt(value, factor):
    return "–" if value is None else f"{value * factor:.4g}"


def markdown(rows, labels, info) -> str:
    from crbnet.plots.maps import display_scale

    lines = [f"# Phantom study: {info['model']}, SNR {info['snr']:g} "
             f"(mean |M0| over the brain / σ), grid {info['shape']}, seed {info['seed']}", "",
             "Per tissue: truth and estimates as mean ± std over the voxels; bias and RMSE of "
             "θ̂ − θ; √CRB at the truth (true σ and M0); RMSE/√CRB ≈ 1 for an efficient "
             "unbiased estimator.", ""]
    head = "| tissue | parameter | truth | √CRB | " + " | ".join(
        f"{l} mean ± std | {l} bias | {l} RMSE/√CRB" for l in labels) + " |"
    lines += [head, "|" + "---|" * (4 + 3 * len(labels))]
    for r in rows:
        factor, unit = display_scale(r["unit"], np.array([r["truth_mean"]]))
        cells = [r["tissue"], f"{r['parameter']}{' (' + unit + ')' if unit else ''}",
                 f"{_fmt(r['truth_mean'], factor)} ± {_fmt(r['truth_std'], factor)}",
                 _fmt(r["crb_std"], factor)]
        for l in labels:
            e = r["estimators"][l]
            if "mean" not in e:
                cells += ["–", "–", "–"]
                continue
            ratio = e["rmse_over_crb"]
            cells += [f"{_fmt(e['mean'], factor)} ± {_fmt(e['std'], factor)}",
                      _fmt(e["bias"], factor), "–" if ratio is None else f"{ratio:.3g}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def figure(rows, labels, model, path, title):
    """Per parameter: estimates vs truth per tissue (top) and RMSE/√CRB per tissue (bottom)."""
    from crbnet.plots import save_figure, subplots
    from crbnet.plots.maps import display_scale

    params = list(model.parameters)
    tissues = list(dict.fromkeys(r["tissue"] for r in rows))
    n = len(params)
    cols = min(3, n)
    n_rows = math.ceil(n / cols)
    fig, axes = subplots(2 * n_rows, cols, figsize=(4.2 * cols, 5.8 * n_rows), squeeze=False)
    width = 0.8 / (len(labels) + 1)
    x = np.arange(len(tissues))
    for k, p in enumerate(params):
        top = axes[2 * (k // cols)][k % cols]
        bottom = axes[2 * (k // cols) + 1][k % cols]
        sub = {r["tissue"]: r for r in rows if r["parameter"] == p}
        factor, unit = display_scale(model.units[p],
                                     np.array([r["truth_mean"] for r in sub.values()]))
        truth = [sub[t]["truth_mean"] * factor for t in tissues]
        crb_std = [(sub[t]["crb_std"] or 0) * factor for t in tissues]
        top.errorbar(x - 0.4 + width / 2, truth, yerr=crb_std, fmt="k_", ms=12, capsize=3,
                     label="truth ± √CRB")
        for i, label in enumerate(labels):
            est = [sub[t]["estimators"][label] for t in tissues]
            offset = x - 0.4 + width * (i + 1.5)
            top.errorbar(offset, [e.get("mean", np.nan) * factor for e in est],
                         yerr=[e.get("std", np.nan) * factor for e in est], fmt="o", ms=4,
                         capsize=2, label=f"{label} (mean ± std)")
            ratio = [e.get("rmse_over_crb") or np.nan for e in est]
            bottom.bar(offset, ratio, width=width, label=label)
        top.set_xticks(x, tissues)
        top.set_ylabel(f"{p} ({unit})" if unit else p)
        positive = [v for v in truth if v > 0]
        if positive and max(positive) / min(positive) > 20:
            top.set_yscale("log")
        top.grid(alpha=0.3)
        bottom.axhline(1.0, color="k", lw=0.8, ls="--")
        bottom.set_xticks(x, tissues)
        bottom.set_yscale("log")
        bottom.set_ylabel(f"RMSE / √CRB of {p}")
        bottom.grid(alpha=0.3, which="both")
    for k in range(n, n_rows * cols):
        axes[2 * (k // cols)][k % cols].axis("off")
        axes[2 * (k // cols) + 1][k % cols].axis("off")
    axes[0][0].legend(fontsize=7)
    axes[1][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def run(args) -> int:
    from crbnet.cli._progress import terminal_bars
    from crbnet.imaging.apply import apply_to_volume
    from crbnet.imaging.nifti import ArraySignals
    from crbnet.plots.apply_figure import draw_apply_maps
    from crbnet.imaging.phantom import make_phantom, parse_shape
    from crbnet.files import write_json, write_text
    from crbnet.physics.sequences import sequence_hash

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or "cpu")
    out = Path(args.out)
    estimators, model = load_estimators(args, device)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    phantom = make_phantom(model, parse_shape(args.shape), args.snr, args.seed)
    print(f"phantom {model.name} {list(phantom.shape)}: {int(phantom.mask.sum())} brain voxels, "
          f"sigma {phantom.sigma:.4g} (SNR {args.snr:g} = mean |M0| / sigma) "
          f"[{time.time() - t0:.1f} s]", file=sys.stderr)
    t0 = time.time()
    crb_var = crb_reference(phantom, device)
    print(f"CRB at the truth [{time.time() - t0:.1f} s]", file=sys.stderr)
    source = ArraySignals(phantom.signal, phantom.affine,
                          sidecar={"SequenceHash": sequence_hash(model.sequence)})
    results, seconds = {}, {}
    for label, est in estimators.items():
        t0 = time.time()
        results[label] = apply_to_volume(est, source, out / f"maps_{label}", mask=phantom.mask,
                                         uncertainty=not args.no_uncertainty, overwrite=True,
                                         device=device, progress=terminal_bars,
                                         figure=draw_apply_maps)
        seconds[label] = round(time.time() - t0, 2)
        print(f"{label}: {seconds[label]} s, sigma estimate "
              f"{results[label].summary['noise']['sigma']}", file=sys.stderr)
    rows = tissue_table(phantom, results, crb_var)
    labels = list(results)
    info = {"model": model.name, "parameters": list(model.parameters), "fixed": model.fixed,
            "sequence_hash": sequence_hash(model.sequence), "shape": list(phantom.shape),
            "snr": args.snr, "snr_definition": "mean |M0| over the brain / sigma",
            "sigma": phantom.sigma, "seed": args.seed, "device": str(device),
            "estimators": {l: {"name": e.name, "type": type(e).__name__,
                               "checkpoint": getattr(args, {"CRB-net": "crb_net",
                                                            "MSE-net": "mse_net"}.get(l, "x"),
                                                     None)} for l, e in estimators.items()},
            "seconds": seconds,
            "sigma_estimates": {l: r.summary["noise"] for l, r in results.items()}}
    write_json(out / "phantom_study.json", {"info": info, "rows": rows})
    write_text(out / "phantom_study.md", markdown(rows, labels, info))
    figure(rows, labels, model, out / "phantom_study.png",
           f"{model.name}: per-tissue estimates vs truth (SNR {args.snr:g}, |M0|/σ)")
    print(markdown(rows, labels, info))
    print(f"wrote {out / 'phantom_study.json'}, .md and .png", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    from crbnet.errors import InputError

    args = parse_args(argv)
    try:
        return run(args)
    except InputError as exc:
        print(f"bench_phantom_study: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
