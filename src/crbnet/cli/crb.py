"""``crbnet crb``: Cramér–Rao bound of each parameter at one point."""

from __future__ import annotations

import argparse
import json
import math
import warnings

from crbnet.cli._common import (
    add_basis_argument,
    add_model_arguments,
    build_model,
    model_in_basis,
    parse_assignments,
    sequence_line,
)
from crbnet.errors import InputError
from crbnet.physics import hardware
from crbnet.stats.crb import SingularFisherWarning, crb
from crbnet.stats.noise import SNR_DEFINITION


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("crb", help="Cramér–Rao bound of each parameter at one point")
    add_model_arguments(p)
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="parameter value in SI units, repeatable; missing ones take defaults")
    noise = p.add_mutually_exclusive_group()
    noise.add_argument("--sigma", type=float, help="noise std per real/imag part (M0 = 1)")
    noise.add_argument("--snr", type=float, help="SNR = |M0| / sigma, with |M0| = 1")
    add_basis_argument(p, "the bound of the K subspace coefficients (F = Re((U^H J)^H (U^H J)) "
                          "/ sigma^2), next to the time-domain bound")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model = build_model(args)
    data_model = model_in_basis(args, model)
    theta = model.theta_from_dict(parse_assignments(args.param), fill_defaults=True)
    if args.snr is not None:
        if not args.snr > 0 or not math.isfinite(args.snr):
            raise InputError("--snr must be a positive number")
        sigma = 1.0 / args.snr
    else:
        sigma = 1.0 if args.sigma is None else args.sigma
        if not sigma > 0 or not math.isfinite(sigma):
            raise InputError("--sigma must be a positive number")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SingularFisherWarning)
        var = crb(data_model, theta, sigma=sigma)[0]
        full = crb(model, theta, sigma=sigma)[0] if data_model is not model else var
    bad = [p for p, v in zip(model.parameters, var.tolist()) if not math.isfinite(v)]
    if bad:
        raise InputError(f"the Fisher matrix is singular at this point: {', '.join(bad)} "
                         "cannot be estimated (fix them with --fix or move the point)")
    params = dict(zip(model.parameters, theta[0].tolist()))
    bound = dict(zip(model.parameters, var.tolist()))
    inflation = {p: v / f for p, v, f in zip(model.parameters, var.tolist(), full.tolist())}
    basis = getattr(data_model, "basis", None)
    if args.json:
        out = {
            "model": model.name, "parameters": params, "fixed": model.fixed, "sigma": sigma,
            "snr": 1.0 / sigma, "snr_definition": SNR_DEFINITION + "; here |M0| = 1",
            "crb": bound, "std": {p: math.sqrt(v) for p, v in bound.items()},
            "sequence_rf": hardware.rf_summary(model.sequence),
        }
        if basis is not None:
            out["basis"] = data_model.describe()["basis"]
            out["crb_time_domain"] = dict(zip(model.parameters, full.tolist()))
            out["crb_inflation"] = inflation
        print(json.dumps(out, indent=2))
        return 0
    print(f"model {model.name}, sigma = {sigma:g} (SNR = |M0|/sigma = {1 / sigma:g}, |M0| = 1)")
    print(sequence_line(model))
    if basis is not None:
        print(f"data: {basis.shape[1]} subspace coefficients of {basis.shape[0]} time points "
              "(CRB x = subspace CRB / time-domain CRB)")
    if model.fixed:
        print("fixed: " + ", ".join(f"{k}={v:g}" for k, v in model.fixed.items()))
    extra = f" {'CRB x':>10}" if basis is not None else ""
    print(f"{'parameter':<10} {'value':>12} {'unit':<5} {'CRB std':>12} {'std/value':>10}{extra}")
    for p in model.parameters:
        std = math.sqrt(bound[p])
        rel = std / abs(params[p]) if params[p] else float("inf")
        extra = f" {inflation[p]:>10.4g}" if basis is not None else ""
        print(f"{p:<10} {params[p]:>12.5g} {model.units[p] or '-':<5} {std:>12.4g} {rel:>10.3g}"
              f"{extra}")
    return 0
