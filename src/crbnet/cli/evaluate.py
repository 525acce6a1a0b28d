"""``crbnet evaluate``: bias, std and MSE of an estimator against the CRB over a parameter grid."""

from __future__ import annotations

import argparse

from crbnet import files
from crbnet.cli import _sizes
from crbnet.cli._common import (
    add_basis_argument,
    add_device_argument,
    add_estimator_arguments,
    add_model_arguments,
    build_model,
    check_positive,
    comma_list,
    parse_options,
    read_basis_for_estimators,
    resolve_device,
    seed_value,
)
from crbnet.cli.fit import add_option_argument
from crbnet.errors import InputError

DEFAULT_SNR = 100.0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="bias, std and MSE of an estimator relative to the CRB on a grid",
        description="Evaluate a trained network (--checkpoint) or a classical method (--method) "
                    "on a grid over the parameter space (2-D: two chosen parameters, others at "
                    "their defaults) or on samples of the training distribution, with R noise "
                    "realizations per point. Writes DIR/evaluation.json and DIR/evaluation.png, "
                    "with the fraction of estimates off by > 5 sqrtCRB split into local minima "
                    "(fit cost above the truth's) and alternative solutions. "
                    "SNR = |M0|/sigma with |M0| = 1.")
    add_estimator_arguments(p, "trained network (file or run dir)")
    add_model_arguments(p, required=False)
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--snr", default=None, metavar="SNR[,SNR...]",
                   help=f"SNR = |M0|/sigma (default: the network's training SNR, geometric "
                        f"mean of a range; {DEFAULT_SNR:g} for --method); with --points a "
                        f"comma-separated list, e.g. 10,20,30,50")
    p.add_argument("--points", metavar="WM,GM|FILE.csv",
                   help="instead of a grid: tissue points (names of the phantom's tissue table "
                        "or a CSV with a name column and one column per estimated parameter, "
                        "SI); writes DIR/points.json and DIR/points.png with mean, bias, "
                        "|bias|/sqrtCRB, relative bias and std/sqrtCRB, each with its "
                        "standard error, and the fraction of gross errors (> 5 sqrtCRB) that "
                        "are local minima or alternative solutions")
    p.add_argument("--sweep", metavar="PARAM",
                   help="with --points: vary PARAM across its training range (--sweep-values "
                        "values) with the others at each tissue point")
    p.add_argument("--sweep-values", type=int, default=9, metavar="N",
                   help="values of a --sweep (default 9)")
    p.add_argument("--against", metavar="CKPT|METHOD",
                   help="with --points: a second estimator (checkpoint, run dir, nlls, "
                        "dictionary, nlls@training...) side by side, biases compared by a "
                        "Welch t-test with Bonferroni correction")
    p.add_argument("--bounds", choices=("physical", "training"), default=None,
                   help="search box of --method nlls/dictionary: the model's physical bounds "
                        "or the training ranges (default: nlls physical, dictionary training)")
    p.add_argument("--grid", type=int, default=16, metavar="N",
                   help="grid points per axis (default 16; keep it small for mt_hybrid_state)")
    p.add_argument("--grid-parameters", metavar="A,B",
                   help="the two parameters to grid (default: the first two estimated)")
    p.add_argument("--samples", type=int, metavar="N",
                   help="instead of a grid: N points drawn from the training distribution")
    p.add_argument("--realizations", type=int, default=100, metavar="R",
                   help="noise realizations per point (default 100)")
    p.add_argument("--seed", type=seed_value, default=0, help="seed of noise and M0 phases")
    add_option_argument(p)
    add_basis_argument(p, "test on the K coefficients in this basis, against their CRBs "
                          "(networks must have been trained in it)")
    add_device_argument(p)
    p.set_defaults(func=run)


def parse_snrs(text: str | None) -> list[float] | None:
    """'50' or '10,20,30,50' -> positive numbers (None stays None)."""
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"--snr expects a number or a comma-separated list, got {text!r}"
                         ) from None
    if not values:
        raise InputError("--snr is empty")
    for v in values:
        check_positive(v, "--snr")
    return values


def run(args: argparse.Namespace) -> int:
    files.check_output_folder(args.out)
    from crbnet.assessment.compare import resolve_estimators, training_snr
    from crbnet.assessment.evaluate import SNR_DEFINITION, evaluate, make_grid, sample_points
    from crbnet.cli._progress import terminal_bars
    from crbnet.reporting.evaluation import write_evaluation

    snrs = parse_snrs(args.snr)
    if args.points is None:
        for flag in ("sweep", "against"):
            if getattr(args, flag):
                raise InputError(f"--{flag} needs --points")
        if snrs is not None and len(snrs) > 1:
            raise InputError("several SNRs need --points")
        args.snr = None if snrs is None else snrs[0]
    device = resolve_device(args.device)
    if args.realizations < 2:
        raise InputError("--realizations must be >= 2")
    if args.samples is None and args.grid < 1:
        raise InputError("--grid must be >= 1")
    if args.samples is not None and args.samples < 1:
        raise InputError("--samples must be >= 1")
    model = build_model(args) if args.model else None
    if args.method and model is None:
        raise InputError("--method needs --model")
    if args.checkpoint and args.option:
        raise InputError("--option applies to --method estimators only")
    spec = args.checkpoint or args.method
    if args.method and args.bounds:
        spec = f"{spec}@{args.bounds}"
    specs = [spec] + ([args.against] if args.points and args.against else [])
    basis = read_basis_for_estimators(args, model, [args.checkpoint])
    model, estimators = resolve_estimators(
        specs, model=model, device=device,
        baseline_options={args.method: parse_options(args.option)} if args.method else None,
        basis=basis)
    label, estimator = estimators[0]
    if args.points is not None:
        return run_points(args, model, estimators, snrs, training_snr(estimator))
    snr = args.snr if args.snr is not None else (training_snr(estimator) or DEFAULT_SNR)
    n_axes = min(2, model.n_parameters)
    n_points = args.samples if args.samples is not None else float(args.grid) ** n_axes
    _sizes.evaluate_grid(model, n_points, args.realizations, args.out)
    if args.samples is not None:
        grid = sample_points(model, args.samples, seed=args.seed)
    else:
        axes = None
        if args.grid_parameters is not None:
            axes = comma_list(args.grid_parameters, "--grid-parameters")
        grid = make_grid(model, args.grid, axes=axes)
    result = evaluate(estimator, grid, snr=snr, realizations=args.realizations, seed=args.seed,
                      progress=terminal_bars)
    paths = write_evaluation(result, args.out)
    print(f"{label} on {model.name}: {grid.theta.shape[0]} points x {args.realizations} "
          f"realizations, SNR {snr:g} ({SNR_DEFINITION})")
    print(f"{'parameter':<10} {'MSE/CRB':>9} {'|bias|/sqrtCRB':>15} {'std/sqrtCRB':>12} "
          f"{'points':>7} {'inf CRB':>8}")
    for p, s in result.summary().items():
        print(f"{p:<10} {s['mse_over_crb']:>9.3g} {s['bias_over_sqrt_crb']:>15.3g} "
              f"{s['std_over_sqrt_crb']:>12.3g} {s['n_points']:>7d} "
              f"{s['n_points_infinite_crb']:>8d}")
    print(format_gross_errors(result.gross_error_summary()))
    print(f"{result.voxels_per_second:,.0f} voxels/s; wrote {paths['json']} and {paths['png']}")
    return 0


def format_gross_errors(summary: dict | None) -> str:
    """One line: realizations off by > 5 sqrtCRB, split into local minima and alternatives."""
    if summary is None:
        return "gross errors not classified"
    return (f"gross errors (> {summary['threshold_sqrt_crb']:g} sqrtCRB): "
            f"{100 * summary['gross_fraction']:.2f} % of {summary['n_realizations']} "
            f"realizations; local minima (cost above the truth's) "
            f"{100 * summary['local_minimum_fraction']:.2f} %, alternative solutions (at or "
            f"below) {100 * summary['alternative_fraction']:.2f} %")


def run_points(args: argparse.Namespace, model, estimators: list, snrs: list[float] | None,
               train_snr: float | None) -> int:
    """``--points``: statistics at tissue points (see :mod:`crbnet.assessment.point_study`)."""
    from crbnet.assessment.point_study import study, sweep_points, tissue_points
    from crbnet.cli._progress import terminal_bars
    from crbnet.reporting.points import write_point_study

    points = tissue_points(model, args.points)
    if args.sweep:
        if not 1 <= args.sweep_values <= 10 ** 6:
            raise InputError("--sweep-values must be between 1 and 10^6")
        points = sweep_points(model, points, args.sweep, args.sweep_values)
    snrs = snrs or [train_snr or DEFAULT_SNR]
    _sizes.evaluate_points(model, len(points.names), len(snrs) * len(estimators),
                           args.realizations)
    result = study(estimators, points, snrs, realizations=args.realizations, seed=args.seed,
                   progress=terminal_bars)
    paths = write_point_study(result, args.out)
    print(format_point_table(result))
    print(f"wrote {paths['json']} and {paths['png']}")
    return 0


def format_point_table(result) -> str:
    """Plain-text table: per SNR, point and parameter, bias and std in √CRB units (± SE)."""
    lines = [f"{result.model}: {result.realizations} realizations per point; bias and std in "
             f"units of sqrt(CRB) (± standard error)"]
    head = f"{'SNR':>5} {'point':<16} {'param':<6}"
    for label in result.labels:
        head += f" {label[:22] + ' bias':>28} {'std':>14}"
    if result.test is not None:
        head += f" {'p (Bonf.)':>10}"
    lines.append(head)
    rows = {(r["estimator"], r["snr"], r["point"], r["parameter"]): r for r in result.rows()}
    for snr in result.snrs:
        for name in result.points.names:
            for p in result.parameters:
                line = f"{snr:>5g} {name[:16]:<16} {p:<6}"
                for label in result.labels:
                    r = rows[(label, snr, name, p)]
                    line += (f" {r['bias_over_sqrt_crb']:>+19.3f} ± {r['bias_over_sqrt_crb_se']:.3f}"
                             f" {r['std_over_sqrt_crb']:>6.3f} ± {r['std_over_sqrt_crb_se']:.3f}")
                if result.test is not None:
                    line += f" {rows[(result.labels[0], snr, name, p)]['welch_p_bonferroni']:>10.2g}"
                lines.append(line)
    for label in result.labels:
        for snr in result.snrs:
            s = result.stats[label][snr]
            lines.append(f"{label} SNR {snr:g}: gross errors (> 5 sqrtCRB) "
                         f"{100 * float(s['gross_fraction'].mean()):.2f} %, local minima "
                         f"{100 * float(s['local_minimum_fraction'].mean()):.2f} %, alternative "
                         f"solutions {100 * float(s['alternative_fraction'].mean()):.2f} %")
    return "\n".join(lines)
