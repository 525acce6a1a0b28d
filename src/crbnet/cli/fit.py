"""``crbnet fit``: estimates for complex signals in a .npy file by a registered method that
needs no checkpoint (NLLS, dictionary matching, ...)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from crbnet import estimators as baselines
from crbnet import files
from crbnet.cli import _sizes
from crbnet.cli._common import (
    add_basis_argument,
    add_device_argument,
    add_model_arguments,
    build_model,
    method_help,
    model_in_basis,
    parse_options,
    resolve_device,
)
from crbnet.errors import InputError
from crbnet.estimators.protocol import accepted
from crbnet.estimators.protocol import names as estimator_names


def add_option_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                        help="keyword option of the estimator, repeatable, e.g. n_starts=4 "
                             "(nlls) or n_points=200 (dictionary)")


def load_signals(path: str) -> np.ndarray:
    """A complex [N, T] (or [T]) array from a .npy file; InputError for anything else."""
    return files.read_numeric_npy(path, "input")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fit", help="estimate parameters of complex signals (.npy) by a registered method "
                    f"({', '.join(estimator_names(needs_checkpoint=False))})",
        description="Classical voxel-wise estimation. Input: complex array [N, T] (full time "
                    "series as the model simulates it, any complex M0). Output: float64 "
                    "[N, P] in SI units, columns in the model's parameter order (printed).")
    p.add_argument("--method", required=True, metavar="NAME", help=method_help())
    add_model_arguments(p)
    p.add_argument("--input", required=True, metavar="SIGNALS.npy", help="complex [N, T]")
    p.add_argument("--out", required=True, metavar="ESTIMATES.npy", help="float64 [N, P] (SI)")
    p.add_argument("--m0-out", metavar="M0.npy", help="also write the complex M0 [N]")
    p.add_argument("--bounds", choices=("physical", "training"), default=None,
                   help="search box: the model's physical bounds or its training ranges (the "
                        "box a network trained with the defaults knows; default: nlls "
                        "physical, dictionary training)")
    add_option_argument(p)
    add_basis_argument(p, "the input holds the K subspace coefficients [N, K] in this basis; "
                          "the fit works in coefficient space")
    add_device_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:

    outputs = [Path(args.out)] + ([Path(args.m0_out)] if args.m0_out else [])
    if len(outputs) == 2 and outputs[0].resolve() == outputs[1].resolve():
        raise InputError("--out and --m0-out name the same file")
    for path in outputs:
        files.check_output_file(path)
    model = model_in_basis(args, build_model(args))
    device = resolve_device(args.device)
    options = parse_options(args.option)
    from crbnet.cli._progress import terminal_bars

    options = {**accepted(args.method, {"device": device, "progress": terminal_bars}), **options}
    if args.bounds:
        from crbnet.assessment.compare import box_options, training_ranges

        options.update(box_options(args.method, model, args.bounds, training_ranges(model)))
    estimator = baselines.get(args.method, model, **options)
    if not hasattr(estimator, "predict_with_m0"):
        raise InputError(f"method {args.method} does not estimate M0 (predict_with_m0); "
                         "`crbnet fit` needs it")
    signals = load_signals(args.input)
    _sizes.fit_output(model, signals.shape[0], args.out)
    theta, m0 = estimator.predict_with_m0(signals)
    theta = theta.cpu().numpy().astype(np.float64)
    arrays = {args.out: theta}
    if args.m0_out:
        arrays[args.m0_out] = m0.cpu().numpy().astype(np.complex128)
    files.write_npys(arrays)   # both files or neither
    units = ", ".join(f"{p} [{model.units[p] or '-'}]" for p in model.parameters)
    print(f"wrote {args.out}: float64 {list(theta.shape)}, columns (SI): {units}")
    if args.m0_out:
        print(f"wrote {args.m0_out}: complex128 [{m0.shape[0]}] (M0)")
    return 0
