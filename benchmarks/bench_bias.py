"""Bias benchmark (issue 14): a bias-reduced MT network against the CRB-loss network and NLLS
at white- and gray-matter points.

Steps, on the CPU threads given (default 2):

1. a CRB-loss network for mt_hybrid_state (default sequence, T1s fixed at 1 s, B1 at 1, SNR
   50, online pool, model defaults) trained for ``--crb-minutes`` — or ``--crb-checkpoint``;
2. the bias-reduced network: that network fine-tuned (``crbnet train --init``) with the
   bias-reduced loss (``--train-realizations`` R noise draws per fingerprint, λ ``--lam``,
   δ ``--delta``, constant learning rate ``--lr``) for ``--finetune-minutes``;
3. both networks at the phantom's WM and GM values, ``--realizations`` noise draws per point
   and SNR (``--snrs``): bias/√CRB and std/√CRB with standard errors, their biases compared by
   a Welch t-test (Bonferroni-corrected);
4. NLLS at the same points (``--nlls-snrs``, ``--nlls-realizations``) searching the model's
   physical bounds and confined to the training ranges; gross errors (> 5 √CRB) classified as
   local minima or alternative solutions; and the same classification on ``--nlls-voxels``
   voxels drawn from the training distribution at SNR 50 and 100.

Targets (judged at SNR 50 on every parameter whose √CRB/value ≤ 0.25 at that point): the
bias-reduced network has |bias| ≤ 0.2 √CRB and std ≤ 1.25 √CRB; fine-tuning takes ≤ 15
minutes; NLLS local minima < 1 % of voxels at SNR ≥ 50.

Writes ``<out>.json`` and ``<out>.png``. ``--quick`` shortens everything (a smoke run, no
targets meant). Timings depend on the machine and its load; the JSON records the load average.

Usage::

    python benchmarks/bench_bias.py [--threads 2] [--crb-minutes 5] [--finetune-minutes 10]
        [--crb-checkpoint RUN] [--snrs 10,20,30,50] [--realizations 1000] [--quick]
        [--out benchmarks/results/bench_bias] [--keep-runs DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL = "mt_hybrid_state"
FIX = ["T1s=1", "B1=1"]
POINTS = "WM,GM"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--snr-train", type=float, default=50.0)
    p.add_argument("--crb-minutes", type=float, default=5.0)
    p.add_argument("--crb-checkpoint", help="reuse this CRB-loss run instead of training one")
    p.add_argument("--finetune-minutes", type=float, default=10.0)
    p.add_argument("--train-realizations", type=int, default=100)
    p.add_argument("--fingerprints", type=int, default=16, help="fingerprints per batch")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--lam", type=float, default=1.0)
    p.add_argument("--delta", type=float, default=1.0)
    p.add_argument("--snrs", default="10,20,30,50")
    p.add_argument("--realizations", type=int, default=1000)
    p.add_argument("--nlls-snrs", default="50")
    p.add_argument("--nlls-realizations", type=int, default=1000)
    p.add_argument("--nlls-voxels", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default="benchmarks/results/bench_bias")
    p.add_argument("--keep-runs", help="keep the training runs in this folder")
    args = p.parse_args()
    if args.quick:
        args.crb_minutes, args.finetune_minutes = min(args.crb_minutes, 1.0), 1.0
        args.realizations, args.nlls_realizations = 100, 20
        args.snrs, args.nlls_snrs, args.nlls_voxels = "50", "50", 16
    return args


def train(name: str, extra: list[str], minutes: float, args: argparse.Namespace,
          runs: Path) -> tuple[Path, float]:
    run = runs / name
    if run.exists():
        shutil.rmtree(run)
    cmd = [sys.executable, "-m", "crbnet", "train", "--model", MODEL, "--snr",
           str(args.snr_train), "--out", str(run), "--max-minutes", str(minutes),
           "--seed", str(args.seed), "--no-progress"] + extra
    for f in FIX:
        cmd += ["--fix", f]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads),
               MKL_NUM_THREADS=str(args.threads), NUMBA_NUM_THREADS=str(args.threads))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{name} training failed:\n{proc.stderr[-2000:]}")
    return run, time.perf_counter() - t0


def sequence_commit() -> str | None:
    try:
        out = subprocess.run(["git", "log", "-1", "--format=%h", "--", "src/crbnet/sequences.py"],
                             capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent.parent)
        return out.stdout.strip() or None
    except OSError:
        return None


def targets(rows: list[dict], snr: float) -> list[dict]:
    """Per point and parameter with √CRB/value ≤ 0.25 at ``snr``: the bias-reduced net's
    |bias|/√CRB ≤ 0.2 and std/√CRB ≤ 1.25."""
    out = []
    for r in rows:
        if r["estimator"] != "bias-reduced net" or r["snr"] != snr:
            continue
        if not r["sqrt_crb_over_value"] <= 0.25:
            continue
        out.append({"point": r["point"], "parameter": r["parameter"],
                    "bias_over_sqrt_crb": r["bias_over_sqrt_crb"],
                    "std_over_sqrt_crb": r["std_over_sqrt_crb"],
                    "bias_met": abs(r["bias_over_sqrt_crb"]) <= 0.2,
                    "std_met": r["std_over_sqrt_crb"] <= 1.25})
    return out


def plot(rows: list[dict], snr: float, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    sel = [r for r in rows if r["snr"] == snr]
    labels = list(dict.fromkeys(r["estimator"] for r in sel))
    keys = list(dict.fromkeys((r["point"], r["parameter"]) for r in sel))
    by = {(r["estimator"], r["point"], r["parameter"]): r for r in sel}
    fig, axes = plt.subplots(2, 1, figsize=(max(8, 0.9 * len(keys) + 2), 7), sharex=True)
    x = np.arange(len(keys))
    width = 0.8 / max(1, len(labels))
    for i, label in enumerate(labels):
        for ax, key, limit in ((axes[0], "bias_over_sqrt_crb", 0.2),
                               (axes[1], "std_over_sqrt_crb", 1.25)):
            vals = [abs(by[(label, *k)][key]) if (label, *k) in by else np.nan for k in keys]
            errs = [by[(label, *k)][key + "_se"] if (label, *k) in by else np.nan for k in keys]
            ax.bar(x + (i - (len(labels) - 1) / 2) * width, vals, width, yerr=errs,
                   label=label, capsize=2)
            ax.axhline(limit, color="k", ls="--", lw=0.8)
    axes[0].set_ylabel("|bias| / √CRB")
    axes[1].set_ylabel("std / √CRB")
    axes[0].set_yscale("symlog", linthresh=0.5, linscale=2)
    axes[0].set_ylim(bottom=0)
    axes[1].set_yscale("log")
    judged = {(r["point"], r["parameter"]) for r in sel if r["sqrt_crb_over_value"] <= 0.25}
    axes[1].set_xticks(x, [f"{p}\n{q}{' *' if (p, q) in judged else ''}" for p, q in keys])
    axes[1].set_xlabel("* = √CRB/value ≤ 0.25: the targets apply")
    axes[0].legend(fontsize=8)
    axes[0].set_title(f"{MODEL}, T1s = 1 s, SNR {snr:g}: dashed = targets of the "
                      "bias-reduced net (|bias| ≤ 0.2, std ≤ 1.25)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    args = parse_args()
    import torch

    import crbnet
    from crbnet.assessment.compare import box_options, compare, make_comparison_set, training_ranges
    from crbnet.assessment.point_study import study
    from crbnet.assessment.points import tissue_points

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    runs = Path(args.keep_runs) if args.keep_runs else Path(tempfile.mkdtemp(prefix="bench_bias"))
    runs.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    timing: dict = {}

    if args.crb_checkpoint:
        crb_run = Path(args.crb_checkpoint)
    else:
        print(f"training the CRB-loss network ({args.crb_minutes:g} min)", flush=True)
        crb_run, timing["crb_training_s"] = train("crb", [], args.crb_minutes, args, runs)
    R, F = args.train_realizations, args.fingerprints
    print(f"fine-tuning with the bias-reduced loss ({args.finetune_minutes:g} min, R = {R})",
          flush=True)
    br_run, timing["finetune_s"] = train("bias_reduced", [
        "--init", str(crb_run), "--loss", "bias_reduced", "--batch-size", str(R * F),
        "--lr", str(args.lr), "--epochs", "100000",
        "--set", f"loss.realizations={R}", "--set", f"loss.lam={args.lam}",
        "--set", f"loss.delta={args.delta}", "--set", f"optim.lr_min={args.lr}",
        "--set", "optim.warmup_epochs=0", "--set", "data.batches_per_epoch=50"],
        args.finetune_minutes, args, runs)
    br_summary = json.loads((br_run / "summary.json").read_text())

    crb_net, br_net = crbnet.load(crb_run), crbnet.load(br_run)
    model = crb_net.model
    points = tissue_points(model, POINTS)
    snrs = [float(s) for s in args.snrs.split(",")]
    nlls_snrs = [float(s) for s in args.nlls_snrs.split(",") if s.strip()]
    print(f"networks at {POINTS}: {args.realizations} realizations, SNR {args.snrs}", flush=True)
    t0 = time.perf_counter()
    nets = study([("CRB-net", crb_net), ("bias-reduced net", br_net)], points, snrs,
                 realizations=args.realizations, seed=args.seed + 1)
    timing["networks_evaluation_s"] = time.perf_counter() - t0
    ranges = training_ranges(model, [crb_net])
    nlls = [(label, crbnet.estimators.get("nlls", model, **box_options("nlls", model, box, ranges)))
            for label, box in (("NLLS", None), ("NLLS (training box)", "training"))]
    rows = nets.rows()
    nlls_json = None
    if nlls_snrs:
        print(f"NLLS at {POINTS}: {args.nlls_realizations} realizations, SNR {args.nlls_snrs}",
              flush=True)
        t0 = time.perf_counter()
        nlls_study = study(nlls, points, nlls_snrs, realizations=args.nlls_realizations,
                           seed=args.seed + 2)
        timing["nlls_points_s"] = time.perf_counter() - t0
        rows += nlls_study.rows()
        nlls_json = nlls_study.to_json()
    random_voxels = []
    if args.nlls_voxels:
        for snr in (50.0, 100.0):
            print(f"NLLS on {args.nlls_voxels} training-distribution voxels, SNR {snr:g}",
                  flush=True)
            test = make_comparison_set(model, args.nlls_voxels, snr, seed=args.seed + 3)
            res = compare(nlls, model=model, test=test)
            for row in res.rows:
                random_voxels.append({k: row[k] for k in (
                    "label", "mse_over_crb", "gross_fraction", "local_minimum_fraction",
                    "alternative_fraction", "voxels_per_second")} | {"snr": snr})

    judged = targets(rows, 50.0) if 50.0 in snrs else []
    local_min = [r["local_minimum_fraction"] for r in rows
                 if r["estimator"].startswith("NLLS") and r["snr"] >= 50]
    local_min += [r["local_minimum_fraction"] for r in random_voxels]
    result = {
        "model": MODEL, "fixed": dict(model.fixed), "parameters": list(model.parameters),
        "sequence_commit": sequence_commit(), "points": POINTS, "args": vars(args),
        "timing_s": timing, "finetune_epochs": br_summary["epochs"],
        "finetune_val_crb_loss": br_summary["val_crb_loss"],
        "targets": {
            "bias_reduced_at_snr50": judged,
            "all_bias_met": bool(judged) and all(t["bias_met"] for t in judged),
            "all_std_met": bool(judged) and all(t["std_met"] for t in judged),
            "finetune_minutes": timing["finetune_s"] / 60,
            "finetune_met": timing["finetune_s"] <= 15 * 60,
            "nlls_local_minimum_max_fraction": max(local_min) if local_min else None,
            "nlls_local_minimum_met": bool(local_min) and max(local_min) < 0.01,
        },
        "rows": rows, "welch": nets.to_json()["welch"], "nlls_random_voxels": random_voxels,
        "nlls_points": None if nlls_json is None else {"welch": nlls_json["welch"]},
        "threads": args.threads, "cpu_count": os.cpu_count(),
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
    }
    from crbnet.files import write_json

    write_json(out.with_suffix(".json"), result, indent=1)
    plot(rows, 50.0 if 50.0 in snrs else snrs[-1], out.with_suffix(".png"))
    print_tables(rows, result)
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")


def print_tables(rows: list[dict], result: dict) -> None:
    labels = list(dict.fromkeys(r["estimator"] for r in rows))
    by = {(r["estimator"], r["snr"], r["point"], r["parameter"]): r for r in rows}
    for snr in sorted({r["snr"] for r in rows}):
        print(f"\nSNR {snr:g}: bias/√CRB | std/√CRB (± SE)")
        print("| point | param | √CRB/value | "
              + " | ".join(f"{lab} bias | {lab} std" for lab in labels) + " |")
        print("|---|---|---:|" + "---:|" * (2 * len(labels)))
        keys = dict.fromkeys((r["point"], r["parameter"]) for r in rows if r["snr"] == snr)
        for point, param in keys:
            first = next(by[(lab, snr, point, param)] for lab in labels
                         if (lab, snr, point, param) in by)
            cells = []
            for lab in labels:
                r = by.get((lab, snr, point, param))
                cells.append("– | –" if r is None else
                             f"{r['bias_over_sqrt_crb']:+.2f}±{r['bias_over_sqrt_crb_se']:.2f} | "
                             f"{r['std_over_sqrt_crb']:.2f}±{r['std_over_sqrt_crb_se']:.2f}")
            print(f"| {point} | {param} | {first['sqrt_crb_over_value']:.3g} | "
                  + " | ".join(cells) + " |")
    t = result["targets"]
    print(f"\nfine-tuning {t['finetune_minutes']:.1f} min ({result['finetune_epochs']} epochs); "
          f"targets: bias {t['all_bias_met']}, std {t['all_std_met']}, time "
          f"{t['finetune_met']}, NLLS local minima max "
          f"{t['nlls_local_minimum_max_fraction']} ({t['nlls_local_minimum_met']})")
    for r in result["nlls_random_voxels"]:
        print(f"{r['label']} SNR {r['snr']:g}, random voxels: gross {100 * r['gross_fraction']:.1f} %,"
              f" local minima {100 * r['local_minimum_fraction']:.1f} %, alternative "
              f"{100 * r['alternative_fraction']:.1f} %")


if __name__ == "__main__":
    main()
