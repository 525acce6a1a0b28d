"""``crbnet evaluate``: bias, std and MSE of an estimator against the CRB over a parameter grid."""

from __future__ import annotations

import argparse

from .. import io
from ..errors import InputError
from ._common import (add_device_argument, add_estimator_arguments, add_model_arguments,
                      build_model, check_positive, parse_options, resolve_device)
from .fit import add_option_argument

DEFAULT_SNR = 100.0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="bias, std and MSE of an estimator relative to the CRB on a grid",
        description="Evaluate a trained network (--checkpoint) or a classical method (--method) "
                    "on a grid over the parameter space (2-D: two chosen parameters, others at "
                    "their defaults) or on samples of the training distribution, with R noise "
                    "realizations per point. Writes DIR/evaluation.json and DIR/evaluation.png. "
                    "SNR = |M0|/sigma with |M0| = 1.")
    add_estimator_arguments(p, "trained network (file or run dir)")
    add_model_arguments(p, required=False)
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--snr", type=float, default=None,
                   help=f"SNR = |M0|/sigma (default: the network's training SNR, geometric "
                        f"mean of a range; {DEFAULT_SNR:g} for --method)")
    p.add_argument("--grid", type=int, default=16, metavar="N",
                   help="grid points per axis (default 16; keep it small for mt_hybrid_state)")
    p.add_argument("--grid-parameters", metavar="A,B",
                   help="the two parameters to grid (default: the first two estimated)")
    p.add_argument("--samples", type=int, metavar="N",
                   help="instead of a grid: N points drawn from the training distribution")
    p.add_argument("--realizations", type=int, default=100, metavar="R",
                   help="noise realizations per point (default 100)")
    p.add_argument("--seed", type=int, default=0, help="seed of noise and M0 phases")
    add_option_argument(p)
    add_device_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    io.check_output_folder(args.out)
    from ..compare import resolve_estimators, training_snr
    from ..evaluate import SNR_DEFINITION, evaluate, make_grid, sample_points

    device = resolve_device(args.device)
    if args.realizations < 2:
        raise InputError("--realizations must be >= 2")
    if args.samples is None and args.grid < 1:
        raise InputError("--grid must be >= 1")
    if args.samples is not None and args.samples < 1:
        raise InputError("--samples must be >= 1")
    check_positive(args.snr, "--snr")
    model = build_model(args) if args.model else None
    if args.method and model is None:
        raise InputError("--method needs --model")
    if args.checkpoint and args.option:
        raise InputError("--option applies to --method estimators only")
    spec = args.checkpoint or args.method
    model, [(label, estimator)] = resolve_estimators(
        [spec], model=model, device=device,
        baseline_options={args.method: parse_options(args.option)} if args.method else None)
    snr = args.snr if args.snr is not None else (training_snr(estimator) or DEFAULT_SNR)
    if args.samples is not None:
        grid = sample_points(model, args.samples, seed=args.seed)
    else:
        axes = None
        if args.grid_parameters:
            axes = [a.strip() for a in args.grid_parameters.split(",") if a.strip()]
        grid = make_grid(model, args.grid, axes=axes)
    result = evaluate(estimator, grid, snr=snr, realizations=args.realizations, seed=args.seed)
    paths = result.save(args.out)
    print(f"{label} on {model.name}: {grid.theta.shape[0]} points x {args.realizations} "
          f"realizations, SNR {snr:g} ({SNR_DEFINITION})")
    print(f"{'parameter':<10} {'MSE/CRB':>9} {'|bias|/sqrtCRB':>15} {'std/sqrtCRB':>12} "
          f"{'points':>7} {'inf CRB':>8}")
    for p, s in result.summary().items():
        print(f"{p:<10} {s['mse_over_crb']:>9.3g} {s['bias_over_sqrt_crb']:>15.3g} "
              f"{s['std_over_sqrt_crb']:>12.3g} {s['n_points']:>7d} "
              f"{s['n_points_infinite_crb']:>8d}")
    print(f"{result.voxels_per_second:,.0f} voxels/s; wrote {paths['json']} and {paths['png']}")
    return 0
