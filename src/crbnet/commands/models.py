"""``crbnet models``: list the signal models with their parameters."""

from __future__ import annotations

import argparse
import json

from .. import hardware, models
from ._common import sequence_line


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list signal models, parameters, units, bounds, defaults")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--model", metavar="NAME",
                   help="only this model (also FILE.py:CLASS or package.module:CLASS)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    chosen = [args.model] if args.model else models.names()
    described = [_describe(models.get(name)) for name in chosen]
    if args.json:
        print(json.dumps(described, indent=2))
        return 0
    for name, d in zip(chosen, described):
        print(f"{d['name']}  (default {sequence_line(models.get(name))})")
        if d["summary"]:
            print(f"  {d['summary'].replace('``', '')}")
        print(f"  {'parameter':<10} {'unit':<5} {'bounds':<24} {'training range':<24} "
              f"{'default':<10} estimated")
        for p in d["parameters"]:
            lo, hi = p["bounds"]
            tlo, thi = p["train_range"]
            est = "yes" if p["estimated"] else "fixed"
            print(f"  {p['name']:<10} {p['unit'] or '-':<5} {f'[{lo:g}, {hi:g}]':<24} "
                  f"{f'[{tlo:g}, {thi:g}]':<24} {p['default']:<10g} {est}")
        for o in d["options"]:
            print(f"  option {o['name']} ({o['type']}, default {o['default']}): "
                  f"{o['description']}  [--model-option {o['name']}=VALUE]")
        print()
    return 0


def _describe(model) -> dict:
    """The model's description plus its default sequence's RF figures (None without RF)."""
    return {**model.describe(), "sequence_rf": hardware.rf_summary(model.sequence)}
