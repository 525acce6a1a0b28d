"""``crbnet basis``: an SVD basis U [T, K] of a model's signals over its training range."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from crbnet.cli import _sizes
from crbnet.cli._common import add_model_arguments, build_model, seed_value
from crbnet.errors import InputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "basis", help="SVD basis of a model's signals (for subspace reconstruction and --basis)",
        description="Simulate noiseless signals over the model's training ranges, keep the K "
                    "leading right singular vectors as the basis U [T, K] (complex, orthonormal "
                    "columns) and print the signal energy they keep and the CRB inflation "
                    "(subspace CRB / time-domain CRB, median over the training range) per "
                    "parameter. The file is what --basis reads everywhere (.npy, .mat or .h5).")
    add_model_arguments(p)
    p.add_argument("--k", type=int, required=True, help="number of basis vectors K")
    p.add_argument("--n", type=int, default=4096,
                   help="noiseless signals the SVD is fitted on (default 4096)")
    p.add_argument("--n-check", type=int, default=128,
                   help="points of the training range for the CRB inflation (default 128)")
    p.add_argument("--seed", type=seed_value, default=0)
    p.add_argument("--out", required=True, metavar="BASIS.npy",
                   help="output file: .npy (default), .mat (variable 'basis') or .h5")
    p.set_defaults(func=run)


def write_basis_file(path: Path, basis) -> None:
    """U as .npy, .mat (variable ``basis``) or .h5 (dataset ``basis``), written atomically."""
    import numpy as np

    from crbnet.files import atomic_path

    from crbnet.special_outputs import stream_for

    array = basis.numpy()
    # a stream without a suffix (/dev/stdout, a pipe) gets the default format
    suffix = path.suffix.lower() or (".npy" if stream_for(path) is not None else "")
    if suffix == ".npy":
        from crbnet.stats.subspace import save_basis

        save_basis(path, basis)
    elif suffix == ".mat":
        import scipy.io

        with atomic_path(path) as tmp:
            scipy.io.savemat(str(tmp), {"basis": array})
    elif suffix in (".h5", ".hdf5"):
        from crbnet.files import hdf5_file

        with atomic_path(path) as tmp, hdf5_file(tmp) as f:
            f.create_dataset("basis", data=np.ascontiguousarray(array))
    else:
        raise InputError("--out must end in .npy, .mat or .h5")


def run(args: argparse.Namespace) -> int:
    import torch

    from crbnet.special_outputs import stream_for
    from crbnet.stats.sampling import ParameterSampler, derived_generator
    from crbnet.stats.subspace import basis_hash, crb_inflation, fit_subspace

    model = build_model(args)
    if not 1 <= args.k <= model.n_timepoints:
        raise InputError(f"--k must be between 1 and {model.n_timepoints} (time points)")
    if args.n < args.k:
        raise InputError("--n must be at least --k")
    if args.n_check < 0:
        raise InputError("--n-check must be >= 0")
    _sizes.basis(model, args.n, args.n_check)
    out = Path(args.out)
    if out.suffix.lower() not in (".npy", ".mat", ".h5", ".hdf5") and \
            not (out.suffix == "" and stream_for(out) is not None):
        raise InputError("--out must end in .npy, .mat or .h5")
    sampler = ParameterSampler(model)
    theta = sampler.sample(args.n, derived_generator(args.seed, "basis"))
    with torch.no_grad():
        sub = fit_subspace(model.simulate(theta), k=args.k)
    write_basis_file(out, sub.basis)
    print(f"wrote {out}: basis U [{model.n_timepoints}, {sub.k}] (complex, orthonormal), "
          f"hash {basis_hash(sub.basis)}")
    print(f"energy kept: {sub.energy:.10f} (1 - {1 - sub.energy:.3g}) of {args.n} noiseless "
          f"{model.name} signals over the training ranges")
    if args.n_check:
        check = sampler.sample(args.n_check, derived_generator(args.seed, "basis-check"))
        inflation = crb_inflation(model, check, sub.basis)
        print("CRB inflation (subspace / time-domain CRB, median over the training range): "
              + ", ".join(f"{p} {v:.4g}" if math.isfinite(v) else f"{p} inf"
                          for p, v in inflation.items()))
    return 0
