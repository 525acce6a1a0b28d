"""``crbnet simulate``: noiseless complex signal (M0 = 1) for one parameter set."""

from __future__ import annotations

import argparse

from crbnet import files
from crbnet.cli._common import add_model_arguments, build_model, parse_assignments, sequence_line


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="simulate the noiseless signal (M0 = 1) to a .npy file")
    add_model_arguments(p)
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="parameter value in SI units, repeatable; missing ones take defaults")
    p.add_argument("--out", required=True, metavar="FILE.npy", help="output: complex128 [1, T]")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    files.check_output_file(args.out)
    model = build_model(args)
    theta = model.theta_from_dict(parse_assignments(args.param), fill_defaults=True)
    signal = model.simulate(theta).numpy()
    files.write_npy(args.out, signal)
    print(f"wrote {args.out}: {signal.dtype} {list(signal.shape)} "
          f"({model.name}, {', '.join(f'{p}={v:g}' for p, v in zip(model.parameters, theta[0].tolist()))})")
    print(sequence_line(model))
    return 0
