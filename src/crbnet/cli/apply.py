"""``crbnet apply``: parameter, M0, noise and CRB-uncertainty maps from NIfTI or MATLAB data."""

from __future__ import annotations

import argparse

from crbnet.cli._common import (
    add_basis_argument,
    add_device_argument,
    add_estimator_arguments,
    add_model_arguments,
    add_output_folder_arguments,
    build_model,
    check_positive,
    model_in_basis,
    parse_options,
    read_basis,
    resolve_device,
)
from crbnet.cli import _sizes
from crbnet.errors import InputError
from crbnet.limits import count


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "apply", help="estimate parameter and uncertainty maps from complex NIfTI or MATLAB data",
        description="Estimate parameter maps (SI units, BIDS-style names), M0 magnitude and "
                    "phase, the residual noise level and, per parameter, the Cramér–Rao "
                    "standard deviation at the estimates and the measured noise level. The "
                    "input's last axis is time. Output is written to a temporary folder and "
                    "renamed into place at the end.")
    add_estimator_arguments(p, "trained network (crbnet train)")
    add_model_arguments(p, required=False)
    p.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                   help="keyword option of the --method estimator, repeatable "
                        "(e.g. n_starts=4)")
    data = p.add_argument_group("input (complex data, last axis = time)")
    data.add_argument("--input", metavar="FILE",
                      help="complex-valued NIfTI, or a MATLAB .mat file (v5 or v7.3) with the "
                           "complex images x (last axis in MATLAB's order = coefficient or "
                           "time) and an optional mask (used unless --mask is given); maps from "
                           ".mat are written on an identity affine")
    data.add_argument("--real", metavar="FILE", help="real part (with --imag)")
    data.add_argument("--imag", metavar="FILE", help="imaginary part (with --real)")
    data.add_argument("--magnitude", metavar="FILE", help="magnitude (with --phase)")
    data.add_argument("--phase", metavar="FILE", help="phase in radians (with --magnitude)")
    p.add_argument("--mask", metavar="FILE", help="mask on the input grid (non-zero = estimate): "
                   "NIfTI, or .mat (variable mask); default: the input .mat's mask, else found "
                   "from the data")
    noise = p.add_mutually_exclusive_group()
    noise.add_argument("--sigma", type=float,
                       help="noise std per real/imaginary part (default: estimated)")
    noise.add_argument("--noise", choices=["auto", "background", "residual", "voxel"],
                       default="auto", help="how to estimate sigma: from the background outside "
                       "the mask, the median fit residual, each voxel's residual, or auto "
                       "(background if there is one; default)")
    p.add_argument("--no-uncertainty", action="store_true",
                   help="skip the CRB standard-deviation maps (they are slow for MT)")
    p.add_argument("--chunk-size", type=int, default=4096, metavar="N",
                   help="voxels per estimator call (default 4096)")
    p.add_argument("--max-memory", type=float, default=1024, metavar="MIB",
                   help="memory budget for one read block of input data (default 1024 MiB)")
    add_basis_argument(p, "the input holds the K subspace coefficient images in this basis "
                          "(last axis = coefficient; a T-point time series is projected on it); "
                          "sigma, M0 and CRB-std maps are then those of the coefficients")
    add_device_argument(p)
    p.add_argument("--ignore-sequence-hash", action="store_true",
                   help="accept data whose sidecar names another sequence or model")
    add_output_folder_arguments(p)
    p.set_defaults(func=run)


def _open_input(args: argparse.Namespace):
    """The signal source: a MATLAB .mat file (--input FILE.mat) or NIfTI file(s)."""
    from crbnet.imaging.matlab import MatSignals, is_mat_file
    from crbnet.imaging.nifti import NiftiSignals

    max_bytes = int(args.max_memory * 2 ** 20)
    if is_mat_file(args.input):
        others = [f for f, v in (("--real", args.real), ("--imag", args.imag),
                                 ("--magnitude", args.magnitude), ("--phase", args.phase)) if v]
        if others:
            raise InputError(f"--input FILE.mat holds the complex images; {', '.join(others)} "
                             "cannot be given with it")
        return MatSignals(args.input, max_bytes=max_bytes)
    return NiftiSignals(args.input, real=args.real, imag=args.imag, magnitude=args.magnitude,
                        phase=args.phase, max_bytes=max_bytes)


def _read_mask(args: argparse.Namespace, source):
    """--mask (NIfTI on the input's grid, or .mat with a mask variable), else the mask a .mat
    input carries, else None (found from the data)."""
    from crbnet.imaging.matlab import is_mat_file, read_mat_mask
    from crbnet.imaging.nifti import read_mask

    if not args.mask:
        return getattr(source, "mask", None)
    if is_mat_file(args.mask):
        return read_mat_mask(args.mask, source.spatial_shape)
    return read_mask(args.mask, source.reference())


def run(args: argparse.Namespace) -> int:
    from crbnet.cli._progress import terminal_bars
    from crbnet.imaging.apply import apply_to_volume, as_model_input, check_compatible
    from crbnet.imaging.nifti import check_output_directory
    from crbnet.plots.apply_figure import draw_apply_maps

    device = resolve_device(args.device)
    check_positive(args.sigma, "--sigma")
    if args.chunk_size < 1:
        raise InputError("--chunk-size must be >= 1")
    if not args.max_memory > 0:
        raise InputError("--max-memory must be positive")
    model_flags = [flag for flag, value in (("--model", args.model), ("--sequence", args.sequence),
                                            ("--times", args.times), ("--fix", args.fix),
                                            ("--free", args.free), ("--option", args.option))
                   if value]
    if args.checkpoint and model_flags:
        raise InputError(f"{', '.join(model_flags)} apply to --method only (a checkpoint "
                         "carries its model and sequence)")
    if args.method and not args.model:
        raise InputError("--method needs --model")
    check_output_directory(args.out, args.overwrite)
    source = _open_input(args)
    if args.checkpoint:
        from crbnet.estimators.network import load

        estimator = load(args.checkpoint, device=device)
        basis = read_basis(args, estimator.model)
        if basis is not None:
            estimator = estimator.in_basis(basis)
        check_compatible(as_model_input(source, estimator.model), estimator.model,
                         args.ignore_sequence_hash)
    else:
        model = model_in_basis(args, build_model(args))
        # Check the data against the model before building the estimator (a dictionary can
        # take a while to build).
        check_compatible(as_model_input(source, model), model, args.ignore_sequence_hash)
        from crbnet import estimators as baselines
        from crbnet.estimators.protocol import accepted

        # A built-in that builds or fits for a while shows its bars (an --option wins).
        options = {**accepted(args.method, {"progress": terminal_bars}),
                   **parse_options(args.option)}
        try:
            estimator = baselines.get(args.method, model, **options)
        except TypeError as exc:
            raise InputError(f"--option: {exc}") from None
    _sizes.apply(estimator.model, count(*source.spatial_shape), args.out)
    mask = _read_mask(args, source)
    result = apply_to_volume(estimator, source, args.out, mask=mask, sigma=args.sigma,
                             noise=args.noise, chunk_size=args.chunk_size,
                             max_bytes=int(args.max_memory * 2 ** 20),
                             uncertainty=not args.no_uncertainty, overwrite=args.overwrite,
                             device=device, ignore_sequence_hash=args.ignore_sequence_hash,
                             progress=terminal_bars, figure=draw_apply_maps)
    _print_summary(result.summary, args.out)
    return 0


def _print_summary(s: dict, out: str) -> None:
    """What was estimated, the noise level and the counts worth a look, from apply.json."""
    v, n = s["voxels"], s["noise"]
    print(f"{s['estimator']} on {s['model']}: {v['estimated']} voxels estimated "
          f"({v['in_mask']} in the mask, {v['nonfinite_input']} with NaN/Inf data, "
          f"{v['failed_estimates']} failed)")
    if n["method"] == "voxel":
        print("sigma: per-voxel residual estimate")
    else:
        print(f"sigma = {n['sigma']:.6g} ({n['method']}; std of the real and of the imaginary "
              f"part); SNR = mean |M0| / sigma = {s['snr']['mean_abs_m0_over_sigma']:.4g}")
    oob = {p: c for p, c in v["out_of_bounds"].items() if c}
    if oob:
        print("estimates outside the bounds (written as is): "
              + ", ".join(f"{p} {c}" for p, c in oob.items()))
    edge = {p: c for p, c in v["at_range_edge"].items() if c}
    if edge:
        print("estimates at the edge of the estimator's range (flags.nii.gz): "
              + ", ".join(f"{p} {c}" for p, c in edge.items()))
    sing = {p: c for p, c in v["crb_singular"].items() if c}
    if sing:
        print("singular Fisher matrix (CRB std = NaN): "
              + ", ".join(f"{p} {c}" for p, c in sing.items()))
    print(f"wrote {len(s['files'])} files to {out}")
