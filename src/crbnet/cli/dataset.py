"""``crbnet dataset``: simulate an offline training set (HDF5) with CRBs."""

from __future__ import annotations

import argparse
import time

from crbnet import files
from crbnet.cli import _sizes
from crbnet.cli._common import (
    add_basis_argument,
    add_model_arguments,
    build_model,
    read_basis,
    seed_value,
    sequence_line,
)
from crbnet.cli.train import add_sampling_arguments, sampling_from_args
from crbnet.errors import InputError
from crbnet.learning.hdf5_dataset import write_dataset
from crbnet.stats.sampling import sampler_from_spec


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dataset", help="simulate noiseless signals, parameters and CRBs to HDF5 "
                                       "(offline training data)")
    add_model_arguments(p)
    p.add_argument("--n", type=int, required=True, help="number of samples")
    p.add_argument("--out", required=True, metavar="FILE.h5", help="output HDF5 file")
    p.add_argument("--config", metavar="FILE",
                   help="training config (its [model] and [sampling] tables are used)")
    add_sampling_arguments(p)
    p.add_argument("--storage", choices=("coefficients", "signals"), default="coefficients",
                   help="store SVD subspace coefficients (default, small) or full signals")
    p.add_argument("--k", type=int, help="subspace size (default: by --energy)")
    p.add_argument("--energy", type=float, default=0.9999999,
                   help="fraction of signal energy the subspace keeps (default 0.9999999)")
    add_basis_argument(p, "store the coefficients in this basis (instead of an SVD basis) "
                          "with the CRBs of these coefficients")
    p.add_argument("--chunk-rows", type=int, default=1024, help="rows simulated per chunk")
    p.add_argument("--seed", type=seed_value, default=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from crbnet.cli._progress import terminal_bars

    if args.config:
        from pathlib import Path

        from crbnet.cli.train import apply_model_table
        from crbnet.learning.training_config import read_config_file

        file_data = read_config_file(args.config)
        apply_model_table(args, file_data.get("model", {}), Path(args.config))
    files.check_output_file(args.out)
    model = build_model(args)
    if args.config:
        from crbnet.learning.training_config import check_config_file

        check_config_file(model, file_data)
    if args.n < 1:
        raise InputError("--n must be >= 1")
    if args.chunk_rows < 1:
        raise InputError("--chunk-rows must be >= 1")
    _sizes.dataset(model, args.n, args.chunk_rows, args.storage, args.k, args.out)
    sampler = sampler_from_spec(model, sampling_from_args(args))
    t0 = time.perf_counter()
    info = write_dataset(args.out, model, sampler, args.n, seed=args.seed, storage=args.storage,
                         k=args.k, energy=args.energy, chunk_rows=args.chunk_rows,
                         basis=read_basis(args, model), progress=terminal_bars)
    dt = time.perf_counter() - t0
    k = (f", k={info['k']} ({1 - info['energy']:.1e} of the signal energy dropped)"
         if info["k"] else "")
    print(f"wrote {args.out}: {args.n} samples of {model.name} "
          f"[{', '.join(model.parameters)}], {args.storage}{k}, {dt:.1f} s "
          f"({args.n / dt:.0f} samples/s incl. CRB)")
    print(sequence_line(model))
    return 0
