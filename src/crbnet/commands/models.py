"""``crbnet models``: list the signal models with their parameters."""

from __future__ import annotations

import argparse
import json

from .. import hardware, models
from ._common import sequence_line


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list signal models, parameters, units, bounds, defaults")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    described = [_describe(models.get(name)) for name in models.names()]
    if args.json:
        print(json.dumps(described, indent=2))
        return 0
    for name, d in zip(models.names(), described):
        print(f"{d['name']}  (default {sequence_line(models.get(name))})")
        print(f"  {'parameter':<10} {'unit':<5} {'bounds':<24} {'training range':<24} "
              f"{'default':<10} estimated")
        for p in d["parameters"]:
            lo, hi = p["bounds"]
            tlo, thi = p["train_range"]
            est = "yes" if p["estimated"] else "fixed"
            print(f"  {p['name']:<10} {p['unit'] or '-':<5} {f'[{lo:g}, {hi:g}]':<24} "
                  f"{f'[{tlo:g}, {thi:g}]':<24} {p['default']:<10g} {est}")
        print()
    return 0


def _describe(model) -> dict:
    """The model's description plus its default sequence's RF figures (None without RF)."""
    return {**model.describe(), "sequence_rf": hardware.rf_summary(model.sequence)}
