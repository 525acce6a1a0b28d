"""Dictionary matching with and without refinement between the atoms, against the CRB.

Random truths over the model's training box (sampled as for training), one noise realization
each at several SNRs, matched by the model's default dictionary plain (``refine=False``) and
refined (the default on fine grids; docs/statistics.md). Per SNR, estimator and parameter:
mean, median and 99th percentile of (θ̂ − θ)²/CRB (1 on average = efficient), median
|θ̂/θ − 1|, and the matching time per voxel. A plain dictionary's error has a floor set by its
grid step, so its MSE/CRB grows with SNR; a refined one should stay near 1.

Usage: ``python benchmarks/bench_dictionary_refine.py [--model fisp_mrf] [--voxels 3000]
[--snr 20,50,200] [--threads 2]``. Writes ``benchmarks/results/bench_dictionary_refine.json``
and ``.png``.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="fisp_mrf")
    p.add_argument("--voxels", type=int, default=3000)
    p.add_argument("--snr", default="20,50,200", help="comma-separated SNRs (|M0|/σ, |M0| = 1)")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=str(RESULTS / "bench_dictionary_refine.json"))
    return p.parse_args(argv)


def statistics(theta: torch.Tensor, truth: torch.Tensor, bound: torch.Tensor,
               parameters: tuple[str, ...]) -> dict:
    """Per parameter: MSE/CRB mean, median and 99th percentile, median |relative error|."""
    z = ((theta - truth).square() / bound).numpy()
    rel = (theta / truth - 1).abs().numpy()
    return {p: {"mse_over_crb_mean": float(np.mean(z[:, j])),
                "mse_over_crb_median": float(np.median(z[:, j])),
                "mse_over_crb_p99": float(np.quantile(z[:, j], 0.99)),
                "median_relative_error": float(np.median(rel[:, j]))}
            for j, p in enumerate(parameters)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from crbnet import models
    from crbnet.estimators import DictionaryEstimator
    from crbnet.stats.crb import crb
    from crbnet.stats.noise import add_noise
    from crbnet.stats.sampling import ParameterSampler

    model = models.get(args.model)
    truth = ParameterSampler(model).sample(args.voxels, torch.Generator().manual_seed(args.seed))
    signal = model.simulate(truth).to(torch.complex128)
    refined = DictionaryEstimator(model, refine=True, progress=False).build()
    plain = copy.copy(refined)         # the same atoms, matched without refinement
    plain.refine = False
    dictionaries = {"plain": plain, "refined": refined}
    results: dict = {}
    for snr in [float(s) for s in args.snr.split(",")]:
        sigma = 1.0 / snr
        y = add_noise(signal, sigma, torch.Generator().manual_seed(args.seed + int(snr)))
        bound = crb(model, truth, sigma=sigma, warn=False)
        for label, dictionary in dictionaries.items():
            start = time.perf_counter()
            theta = dictionary.predict(y)
            seconds = time.perf_counter() - start
            entry = statistics(theta, truth, bound, model.parameters)
            entry["us_per_voxel"] = 1e6 * seconds / args.voxels
            results.setdefault(f"{snr:g}", {})[label] = entry
            print(f"SNR {snr:g} {label:7s} " + "  ".join(
                f"{p}: MSE/CRB {entry[p]['mse_over_crb_mean']:.2f} (p99 "
                f"{entry[p]['mse_over_crb_p99']:.1f}), median |rel| "
                f"{100 * entry[p]['median_relative_error']:.2f} %" for p in model.parameters)
                + f"  {entry['us_per_voxel']:.0f} µs/voxel", file=sys.stderr)
    summary = {"benchmark": "bench_dictionary_refine", "model": model.name,
               "voxels": args.voxels, "atoms": plain.n_atoms,
               "grid": {p: len(a) for p, a in plain.axes.items()}, "results": results,
               "loadavg": os.getloadavg(), "threads": torch.get_num_threads()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from crbnet.files import write_json

    write_json(out, summary)
    figure(summary, model.parameters, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


def figure(summary: dict, parameters: tuple[str, ...], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    snrs = list(summary["results"])
    fig, axes = plt.subplots(1, len(parameters), figsize=(5 * len(parameters), 4),
                             squeeze=False)
    for ax, p in zip(axes[0], parameters):
        for label, style in (("plain", "o--"), ("refined", "s-")):
            ax.plot([float(s) for s in snrs],
                    [summary["results"][s][label][p]["mse_over_crb_mean"] for s in snrs],
                    style, label=label)
        ax.axhline(1.0, color="k", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks([float(s) for s in snrs], snrs)
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.set_xlabel("SNR (|M0|/σ)")
        ax.set_ylabel(f"mean (θ̂ − θ)²/CRB, {p}")
        ax.set_title(f"{summary['model']}, {summary['atoms']} atoms, {summary['voxels']} truths",
                     fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
