"""Inference benchmark (issue 4): voxels/s of a trained network vs NLLS vs dictionary matching on
the same noisy voxels, each with its mean MSE/CRB, in one run.

Targets: network ≥ 10⁴ × NLLS and ≥ 10 × dictionary matching in voxels/s, at equal or better
MSE/CRB (mean over parameters).

The test voxels (default 10⁴) are drawn from the model's training distribution, |M0| = 1 with a
random phase, SNR = |M0|/σ (default: the network's training SNR, else 100), handed over as
complex64 like data read from NIfTI (``--input-dtype``). Every estimator sees the same
signals; NLLS may be limited to the first ``--nlls-voxels`` of them because it is slow (its
voxels/s does not depend on how many it gets, beyond batching effects; its MSE/CRB is then
compared with the others' on that same subset, printed as an extra column).

Dictionary matching is run at several sizes (``--dictionary-points``: grid points per parameter),
because its accuracy is limited by the grid spacing: the speed target is judged against the
*fastest dictionary at least as accurate as the network* (mean MSE/CRB), or, when no size up to
the largest reaches the network's accuracy, against that largest one (then the network is both
faster and more accurate, and the JSON says so). Timing covers ``predict`` only (network and
dictionary: the best of three passes), after an untimed warm-up call (dictionary simulation and
start-dictionary building are setup, reported separately).

Usage::

    python benchmarks/bench_inference.py CHECKPOINT [--voxels 10000] [--nlls-voxels N]
        [--snr S] [--dictionary-points 6,8,11] [--input-dtype complex64] [--threads 2]
        [--device cpu] [--out benchmarks/results/bench_inference]
    python benchmarks/bench_inference.py --model fisp_mrf ...   # baselines only (no network)

Writes ``<out>.json`` and ``<out>.png`` and prints a table. Timings depend on the machine and
its load; the JSON records the CPU count and the load average.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

TARGET_VS_NLLS = 1e4
TARGET_VS_DICTIONARY = 10.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", nargs="?", help="trained network (file or run directory)")
    parser.add_argument("--model", help="model when no checkpoint is given (baselines only)")
    parser.add_argument("--voxels", type=int, default=10_000)
    parser.add_argument("--nlls-voxels", type=int, default=None,
                        help="fit only the first N voxels by NLLS (default: all)")
    parser.add_argument("--snr", type=float, default=None)
    parser.add_argument("--dictionary-points", default="",
                        help="comma-separated grid points per parameter for the dictionaries "
                             "(default: the library default of ~10^4 atoms only)")
    parser.add_argument("--input-dtype", choices=["complex64", "complex128"], default="complex64",
                        help="precision the signals are handed over in (default complex64, as "
                             "NIfTI data arrive; every estimator gets the same tensor)")
    parser.add_argument("--plain-dictionary", action="store_true",
                        help="dictionary matching without refinement between the atoms "
                             "(refine=False, as measured before the refinement existed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="benchmarks/results/bench_inference")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    import crbnet
    from crbnet import estimators as estimator_registry
    from crbnet.assessment.compare import (
        gross_error_fractions,
        make_comparison_set,
        score,
        timed_predict,
        training_snr,
    )
    from crbnet.files import write_json
    from crbnet.plots.comparison import plot_comparison

    network = None
    if args.checkpoint:
        network = crbnet.load(args.checkpoint, device=args.device)
        model = network.model
    elif args.model:
        model = crbnet.get_model(args.model)
    else:
        parser.error("give a checkpoint or --model")
    snr = args.snr or (training_snr(network) if network is not None else None) or 100.0
    print(f"model {model.name}, {args.voxels} test voxels, SNR {snr:g} (|M0|/sigma, |M0| = 1), "
          f"{args.threads} CPU thread(s), device {args.device}", flush=True)
    test = make_comparison_set(model, args.voxels, snr, args.seed)
    test = dataclasses.replace(test, signals=test.signals.to(getattr(torch, args.input_dtype)))
    n_nlls = min(args.voxels, args.nlls_voxels or args.voxels)
    subset = slice(0, n_nlls)
    sub_test = type(test)(theta=test.theta[subset], signals=test.signals[subset],
                          crb=test.crb[subset], snr=test.snr, seed=test.seed)

    estimators = []
    if network is not None:
        estimators.append(("network", network, test))
    sizes = [int(n) for n in args.dictionary_points.split(",") if n.strip()] or [None]
    dictionaries = {}
    for n_points in sizes:
        dictionary = estimator_registry.get("dictionary", model, device=args.device, n_points=n_points,
                                   refine=not args.plain_dictionary)
        start = time.perf_counter()
        dictionary.build()
        label = "dictionary" if len(sizes) == 1 else f"dictionary {dictionary.n_atoms}"
        dictionaries[label] = (dictionary, time.perf_counter() - start)
        estimators.append((label, dictionary, test))
    from crbnet.cli._progress import terminal_bars

    nlls = estimator_registry.get("nlls", model, device=args.device, progress=terminal_bars)
    start = time.perf_counter()
    nlls.start_dictionary.build()
    nlls_setup = time.perf_counter() - start
    estimators.append(("nlls", nlls, sub_test))

    rows = []
    for label, est, data in estimators:
        print(f"running {label} on {data.signals.shape[0]} voxels ...", flush=True)
        estimates, seconds = timed_predict(est, data.signals)
        if label != "nlls":
            # Fast estimators: best of three passes, so a busy moment does not decide.
            seconds = min([seconds] + [timed_predict(est, data.signals)[1] for _ in range(2)])
        row = {"label": label, "voxels": int(data.signals.shape[0]), "seconds": seconds,
               "voxels_per_second": data.signals.shape[0] / seconds,
               **score(estimates, data, model.parameters),
               **gross_error_fractions(model, data, estimates)}
        if data is test and n_nlls < args.voxels:
            row["on_nlls_subset"] = score(estimates[subset], sub_test, model.parameters)
        rows.append(row)
    by = {r["label"]: r for r in rows}
    for label, (dictionary, setup) in dictionaries.items():
        by[label]["setup_seconds"] = setup
        by[label]["atoms"] = dictionary.n_atoms
    by["nlls"]["setup_seconds"] = nlls_setup
    by["nlls"]["n_starts"] = nlls.n_starts

    def mean_ratio(row: dict, on_subset: bool = False) -> float:
        src = row.get("on_nlls_subset", row) if on_subset else row
        return src["mse_over_crb_mean_over_parameters"]

    summary: dict = {}
    if network is not None:
        net = by["network"]
        # The reference dictionary: the fastest one at least as accurate as the network, else
        # the most accurate one.
        dict_rows = [by[label] for label in dictionaries]
        as_good = [r for r in dict_rows if mean_ratio(r) <= mean_ratio(net)]
        ref = (max(as_good, key=lambda r: r["voxels_per_second"]) if as_good
               else min(dict_rows, key=mean_ratio))
        summary = {
            "speedup_vs_nlls": net["voxels_per_second"] / by["nlls"]["voxels_per_second"],
            "reference_dictionary": ref["label"],
            "reference_dictionary_atoms": ref["atoms"],
            "a_dictionary_matches_network_accuracy": bool(as_good),
            "speedup_vs_dictionary": net["voxels_per_second"] / ref["voxels_per_second"],
            "network_mse_over_crb": mean_ratio(net),
            "dictionary_mse_over_crb": mean_ratio(ref),
            "nlls_mse_over_crb": mean_ratio(by["nlls"]),
            "network_mse_over_crb_on_nlls_subset": mean_ratio(net, True),
        }
        summary["meets_speed_vs_nlls"] = summary["speedup_vs_nlls"] >= TARGET_VS_NLLS
        summary["meets_speed_vs_dictionary"] = (summary["speedup_vs_dictionary"]
                                                >= TARGET_VS_DICTIONARY)
        summary["accuracy_at_least_dictionary"] = (summary["network_mse_over_crb"]
                                                   <= summary["dictionary_mse_over_crb"])
        summary["accuracy_at_least_nlls"] = (summary["network_mse_over_crb_on_nlls_subset"]
                                             <= summary["nlls_mse_over_crb"])

    # ---- report ----------------------------------------------------------------------------
    params = list(model.parameters)
    print()
    head = f"{'estimator':<12} {'voxels':>7} {'voxels/s':>12} " + " ".join(
        f"{'MSE/CRB ' + p:>14}" for p in params) + f" {'mean':>7}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['label']:<12} {r['voxels']:>7d} {r['voxels_per_second']:>12,.1f} " + " ".join(
            f"{r['mse_over_crb'][p]:>14.3g}" for p in params) +
            f" {r['mse_over_crb_mean_over_parameters']:>7.3g}")
        if "on_nlls_subset" in r:
            sub = r["on_nlls_subset"]
            print(f"{'  (NLLS set)':<12} {n_nlls:>7d} {'':>12} " + " ".join(
                f"{sub['mse_over_crb'][p]:>14.3g}" for p in params) +
                f" {sub['mse_over_crb_mean_over_parameters']:>7.3g}")
    for r in rows:
        print(f"{r['label']}: off by > 5 sqrtCRB {100 * r['gross_fraction']:.1f} % of voxels "
              f"(local minima {100 * r['local_minimum_fraction']:.1f} %, alternative solutions "
              f"{100 * r['alternative_fraction']:.1f} %)")
    for label, (dictionary, setup) in dictionaries.items():
        print(f"setup (excluded): {label}: {setup:.1f} s for {dictionary.n_atoms} atoms")
    print(f"setup (excluded): NLLS start dictionary {nlls_setup:.1f} s")
    if summary:
        how = ("the fastest dictionary at least as accurate" if
               summary["a_dictionary_matches_network_accuracy"] else
               "the most accurate dictionary, still less accurate than the network")
        print(f"network speed: {summary['speedup_vs_nlls']:,.0f} x NLLS (target "
              f"{TARGET_VS_NLLS:,.0f}), {summary['speedup_vs_dictionary']:,.1f} x "
              f"{summary['reference_dictionary']} ({how}; target {TARGET_VS_DICTIONARY:g})")
    record = {
        "model": model.name, "parameters": params, "snr": snr,
        "snr_definition": "|M0| / sigma with |M0| = 1, sigma per real/imaginary part",
        "voxels": args.voxels, "nlls_voxels": n_nlls, "seed": args.seed,
        "input_dtype": args.input_dtype,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "threads": args.threads, "device": args.device, "checkpoint": args.checkpoint,
        "cpu_count": os.cpu_count(), "load_average": list(os.getloadavg()),
        "rows": rows, "summary": summary,
        "targets": {"speedup_vs_nlls": TARGET_VS_NLLS,
                    "speedup_vs_dictionary": TARGET_VS_DICTIONARY},
    }
    out = Path(args.out)
    write_json(out.with_suffix(".json"), record)
    plot_comparison(rows, params, out.with_suffix(".png"),
                    title=f"{model.name}: inference on the same voxels, SNR {snr:g} (|M0|/σ); "
                          f"NLLS on {n_nlls} of {args.voxels}")
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
