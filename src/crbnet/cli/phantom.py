"""``crbnet phantom``: a brain-like digital phantom as NIfTI (signals, mask, truth maps)."""

from __future__ import annotations

import argparse

from crbnet.cli import _sizes
from crbnet.cli._common import (
    add_basis_argument,
    add_model_arguments,
    add_output_folder_arguments,
    build_model,
    check_positive,
    model_in_basis,
    seed_value,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "phantom", help="simulate a brain-like digital phantom (NIfTI signals and truth maps)",
        description="Brain-like phantom (WM, GM, CSF, lesions) with literature tissue values, "
                    "smooth within-tissue variation, smooth M0 magnitude and phase, and complex "
                    "Gaussian noise with sigma = mean |M0| over the brain / SNR. Writes "
                    "signal.nii.gz (complex64, last axis = time), mask, labels, truth_<param>, "
                    "truth_M0_magnitude/phase, phantom.json and truth.png. B1 is simulated with "
                    "a smooth map only if the model estimates it (--free B1), else at its fixed "
                    "value (1).")
    add_model_arguments(p)
    p.add_argument("--shape", default="128x128", metavar="NXxNY[xNZ]",
                   help="grid: one slice (128x128, default) or a volume (96x96x24)")
    p.add_argument("--snr", type=float, required=True,
                   help="SNR = mean |M0| over the brain / sigma (sigma per real/imag part)")
    p.add_argument("--seed", type=seed_value, default=0, help="seed of every random choice (default 0)")
    p.add_argument("--field-strength", type=float, default=3.0, metavar="TESLA",
                   help="tissue values at 3 T (default) or 1.5 T (not for mt_hybrid_state)")
    p.add_argument("--variation", type=float, default=0.05,
                   help="peak relative smooth variation within a tissue (default 0.05)")
    p.add_argument("--m0-scale", type=float, default=1000.0,
                   help="|M0| of pure water, arbitrary units (default 1000)")
    p.add_argument("--uncompressed", action="store_true",
                   help="write signal.nii instead of signal.nii.gz (memory-mapped when read)")
    add_basis_argument(p, "write the K subspace coefficient images U^H y instead of the time "
                          "series (noise of the same sigma, drawn in coefficient space)")
    add_output_folder_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from crbnet.imaging.nifti import check_output_directory
    from crbnet.imaging.phantom import make_phantom, parse_shape, save_phantom
    from crbnet.reporting.phantom import truth_figure

    model = model_in_basis(args, build_model(args))
    shape = parse_shape(args.shape)
    check_positive(args.snr, "--snr")
    check_output_directory(args.out, args.overwrite)
    _sizes.phantom(model, shape, args.out, compressed=not args.uncompressed)
    phantom = make_phantom(model, shape, args.snr, args.seed, field_strength=args.field_strength,
                           variation=args.variation, m0_scale=args.m0_scale)
    paths = save_phantom(phantom, args.out, compress=not args.uncompressed,
                         overwrite=args.overwrite, figures=truth_figure)
    counts = ", ".join(f"{name} {int(m.sum())}" for name, m in phantom.tissue_masks().items())
    points = (f"{model.n_timepoints} coefficients" if hasattr(model, "basis") else
              f"{model.n_timepoints} time points")
    print(f"phantom {model.name}: grid {list(phantom.shape)}, {points}, "
          f"{int(phantom.mask.sum())} brain voxels ({counts})")
    print(f"SNR = mean |M0| over the brain / sigma = {phantom.snr:g}; sigma = {phantom.sigma:.6g} "
          f"(std of the real and of the imaginary part); B1: {phantom.b1_source}")
    print(f"wrote {len(paths)} files to {args.out}")
    return 0
