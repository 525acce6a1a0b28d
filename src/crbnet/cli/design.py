"""``crbnet design``: design a sequence with the Cramér–Rao bound, within scanner limits."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from crbnet.cli import _sizes
from crbnet.cli._common import (
    add_model_arguments,
    add_output_folder_arguments,
    build_model,
    seed_value,
)
from crbnet.errors import InputError

DEFAULT_TISSUES = ["WM", "GM"]


def _range(text: str, flag: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(":"))
    except ValueError:
        raise InputError(f"{flag} expects LOW:HIGH in SI units, got {text!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi):
        raise InputError(f"{flag} must be an increasing pair of positive numbers, got {text!r}")
    return lo, hi


def register(sub: argparse._SubParsersAction) -> None:
    from crbnet.physics.hardware import HardwareLimits

    lim = HardwareLimits()
    p = sub.add_parser(
        "design", help="design a sequence that minimizes the CRB at tissue points, within "
                       "3 T hardware limits",
        description="Minimize the mean over tissue points of sum_p w_p CRB_p / value_p^2 "
                    "(relative variances, complex M0 as nuisance) over the sequence's controls "
                    "by bounded L-BFGS with exact gradients. Any model that implements "
                    "signal_for_sequence can be designed, FILE.py:CLASS included "
                    "(docs/design.md). Writes DIR/sequence.json (use it with --sequence), "
                    "DIR/design.json and DIR/design.png.")
    add_model_arguments(p)
    p.add_argument("--start", metavar="default|random|FILE", default=None,
                   help="start sequence: the model's default (default), a sequence file, or "
                        "'random' (every run from random controls; the default sequence then "
                        "only gives what is not designed: TR, number of TRs, inversions, ...)")
    p.add_argument("--snr", type=float, default=50.0, help="SNR = |M0| / sigma (default 50)")
    add_output_folder_arguments(p)
    p.add_argument("--tissue", action="append", default=[], metavar="NAME",
                   help="tissue point from the phantom's table (WM, GM, CSF, lesion), "
                        "repeatable; default WM and GM")
    p.add_argument("--points", metavar="FILE.csv",
                   help="tissue points as CSV rows (header = parameter names, optional label)")
    p.add_argument("--weights", action="append", default=[], metavar="NAME=W",
                   help="weight of a parameter's relative variance in the cost (default 1)")
    p.add_argument("--control-points", type=int, default=64, metavar="N",
                   help="kinds mt and segmented: control points of the flip angle and TRF "
                        "per cycle (per segment) (default 64)")
    p.add_argument("--peak-b1", type=float, default=lim.peak_b1, metavar="T",
                   help=f"largest RF amplitude in tesla (default {lim.peak_b1:g})")
    p.add_argument("--trf-range", default=f"{lim.trf_min:g}:{lim.trf_max:g}", metavar="LO:HI",
                   help="allowed RF pulse durations in s (default %(default)s)")
    p.add_argument("--rf-power-max", type=float, default=lim.rf_power_max, metavar="P",
                   help="largest mean RF power sum(w1^2 TRF)/T_cycle in (rad/s)^2 "
                        f"(default {lim.rf_power_max:g})")
    p.add_argument("--max-flip", type=float, metavar="RAD",
                   help="largest flip angle in rad (kind fisp default: the start's largest; "
                        "kinds mt and segmented: pi, i.e. theta <= pi/2 for mt)")
    p.add_argument("--optimize-tr", action="store_true", help="kind fisp: design the TRs too")
    p.add_argument("--tr-range", metavar="LO:HI",
                   help="kind fisp with --optimize-tr: allowed TRs in s (default: the start's)")
    p.add_argument("--starts", type=int, default=4,
                   help="optimizer runs: the start sequence, then random starts (default 4)")
    p.add_argument("--max-minutes", type=float, default=8.0,
                   help="wall-time budget of all runs (default 8)")
    p.add_argument("--max-iterations", type=int, default=2000,
                   help="L-BFGS iterations per run (default 2000); with a generous "
                        "--max-minutes the result no longer depends on the machine's speed")
    p.add_argument("--seed", type=seed_value, default=0, help="seed of the random starts")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from crbnet import files
    from crbnet.assessment.points import load_points
    from crbnet.cli._common import parse_assignments
    from crbnet.design import DesignSpace, SequenceDesigner
    from crbnet.design.report import SNR_NOTE, design_report
    from crbnet.imaging.nifti import atomic_directory, check_output_directory
    from crbnet.physics import hardware
    from crbnet.cli._progress import terminal_bars
    from crbnet.reporting.design import write_design_figure

    if args.start not in (None, "default", "random"):
        if args.sequence:
            raise InputError("give the start sequence with --start or --sequence, not both")
        args.sequence = args.start
    check_output_directory(args.out, args.overwrite)
    trf_min, trf_max = _range(args.trf_range, "--trf-range")
    limits = hardware.HardwareLimits(peak_b1=args.peak_b1, trf_min=trf_min, trf_max=trf_max,
                                     rf_power_max=args.rf_power_max)
    if args.max_flip is not None and not (math.isfinite(args.max_flip) and args.max_flip > 0):
        raise InputError("--max-flip must be a positive number of radians")
    space = DesignSpace(limits=limits, n_control=args.control_points, max_flip=args.max_flip,
                        optimize_tr=args.optimize_tr,
                        tr_range=_range(args.tr_range, "--tr-range") if args.tr_range else None)
    model = build_model(args)
    specs = list(args.tissue) + ([args.points] if args.points else [])
    labels, points = load_points(model, specs or DEFAULT_TISSUES)
    _sizes.design(model, points.shape[0])
    if not (args.max_minutes > 0 and math.isfinite(args.max_minutes)):
        raise InputError("--max-minutes must be a positive number")
    designer = SequenceDesigner(model, points, snr=args.snr,
                                weights=parse_assignments(args.weights, "--weights"),
                                space=space, starts=args.starts, max_minutes=args.max_minutes,
                                max_iterations=args.max_iterations, seed=args.seed,
                                random_only=args.start == "random", progress=terminal_bars)
    print(f"start: {hardware.describe(model.sequence)}")
    result = designer.fit()
    report = design_report(designer, result, labels, args.sequence or args.start or "default")
    with atomic_directory(args.out, overwrite=args.overwrite) as tmp:
        files.write_json(tmp / "sequence.json", result.sequence.to_dict())
        files.write_json(tmp / "design.json", report)
        write_design_figure(report, model.sequence, result.sequence, tmp / "design.png")
    print(f"designed: {hardware.describe(result.sequence)}")
    _print_summary(report, labels, SNR_NOTE)
    print(f"wrote {Path(args.out) / 'sequence.json'}, design.json, design.png")
    return 0


def _print_summary(report: dict, labels: list[str], snr_note: str) -> None:
    start, feasible, result = (report[k] for k in ("start", "start_within_limits", "result"))
    exceeded = f" (beyond limits: {'; '.join(start['violations'])})" if start["violations"] else ""
    print(f"cost = mean relative variance at SNR {report['snr']:g} ({snr_note}):")
    print(f"  start {start['cost']:.4g}{exceeded}; start within limits {feasible['cost']:.4g}; "
          f"designed {result['cost']:.4g} = {result['cost'] / start['cost']:.3f}x the start, "
          f"{result['cost'] / feasible['cost']:.3f}x within limits ({report['elapsed_s']:.0f} s)")
    print(f"{'point':<8} {'parameter':<10} {'start sqrtCRB/value':>20} {'designed':>10}")
    for label in labels:
        for p in report["parameters"]:
            a = start["per_point"][label][p]["relative_sqrt_crb"]
            b = result["per_point"][label][p]["relative_sqrt_crb"]
            print(f"{label:<8} {p:<10} {100 * a:>19.2f}% {100 * b:>9.2f}%")
