"""NLLS efficiency check (issue 4): at high SNR the NLLS estimator must reach the CRB
(var/CRB ≈ 1 within 5 %) with negligible bias — the sanity check of the whole chain (model,
Jacobian, CRB, noise, fit). Dictionary matching is evaluated on the same grid for comparison.

Usage::

    python benchmarks/bench_nlls_efficiency.py [--model fisp_mrf] [--snr 100] [--grid 3]
        [--realizations 600] [--threads 2] [--out benchmarks/results/nlls_efficiency_fisp_mrf]

Writes ``<out>/nlls/evaluation.{json,png}``, ``<out>/dictionary/evaluation.{json,png}`` and
``<out>/summary.json``; prints, per parameter, the pooled var/CRB (mean over grid points) with
its statistical standard error, the largest |bias|/√CRB over the points, and MSE/CRB of both
methods. Tests cover t2_decay; this script covers the slow models (fisp_mrf, mt_hybrid_state
with a small grid).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="fisp_mrf")
    parser.add_argument("--snr", type=float, default=100.0)
    parser.add_argument("--grid", type=int, default=3)
    parser.add_argument("--realizations", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    import crbnet
    from crbnet import estimators
    from crbnet.assessment.evaluate import evaluate, make_grid
    from crbnet.cli._progress import terminal_bars
    from crbnet.reporting.evaluation import write_evaluation
    from crbnet.files import write_json

    model = crbnet.get_model(args.model)
    out = Path(args.out or f"benchmarks/results/nlls_efficiency_{model.name}")
    grid = make_grid(model, args.grid)
    G, R = grid.theta.shape[0], args.realizations
    print(f"{model.name}: {G} grid points x {R} realizations at SNR {args.snr:g} "
          f"(|M0|/sigma, |M0| = 1), {args.threads} thread(s)", flush=True)
    results = {}
    for method in ("nlls", "dictionary"):
        est = estimators.get(method, model, progress=False)
        start = time.perf_counter()
        res = evaluate(est, grid, snr=args.snr, realizations=R, seed=args.seed,
                       progress=terminal_bars)
        wall = time.perf_counter() - start
        write_evaluation(res, out / method)
        results[method] = (res, wall)

    nlls, _ = results["nlls"]
    dic, _ = results["dictionary"]
    summary = {"model": model.name, "snr": args.snr, "grid_points": G, "realizations": R,
               "load_average": list(os.getloadavg()), "parameters": {}}
    print(f"\n{'param':<8} {'var/CRB':>8} {'± s.e.':>7} {'min..max over points':>22} "
          f"{'max|bias|/√CRB':>15} {'MSE/CRB nlls':>13} {'MSE/CRB dict':>13}")
    for j, p in enumerate(model.parameters):
        v = nlls.var_over_crb[:, j]
        v = v[np.isfinite(v)]
        se = float(np.mean(v)) * math.sqrt(2.0 / (v.size * (R - 1)))
        bias = np.nanmax(np.abs(nlls.bias_over_sqrt_crb[:, j]))
        s_n, s_d = nlls.summary()[p], dic.summary()[p]
        summary["parameters"][p] = {
            "var_over_crb": s_n["var_over_crb"], "var_over_crb_standard_error": se,
            "var_over_crb_min": float(v.min()), "var_over_crb_max": float(v.max()),
            "max_abs_bias_over_sqrt_crb": float(bias),
            "bias_standard_error": 1.0 / math.sqrt(R),
            "nlls_mse_over_crb": s_n["mse_over_crb"],
            "dictionary_mse_over_crb": s_d["mse_over_crb"],
            "within_5_percent": abs(s_n["var_over_crb"] - 1) <= 0.05,
        }
        print(f"{p:<8} {s_n['var_over_crb']:>8.4f} {se:>7.4f} "
              f"{f'{v.min():.3f}..{v.max():.3f}':>22} {bias:>15.3f} "
              f"{s_n['mse_over_crb']:>13.4f} {s_d['mse_over_crb']:>13.4f}")
    for method, (res, wall) in results.items():
        summary[f"{method}_voxels_per_second"] = res.voxels_per_second
        summary[f"{method}_wall_seconds"] = wall
        print(f"{method}: {res.voxels_per_second:,.1f} voxels/s (predict only), "
              f"{wall:.0f} s wall")
    write_json(out / "summary.json", summary)
    print(f"wrote {out}/summary.json and the evaluation folders")
    return 0


if __name__ == "__main__":
    sys.exit(main())
