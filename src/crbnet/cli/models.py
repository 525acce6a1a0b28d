"""``crbnet models``: list the signal models with their parameters."""

from __future__ import annotations

import argparse
import json

from crbnet.cli._common import sequence_line
from crbnet.learning.training_config import model_training_defaults
from crbnet.physics import hardware, models


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list signal models, parameters, units, bounds, defaults")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--model", metavar="NAME",
                   help="only this model (also FILE.py:CLASS or package.module:CLASS)")
    p.set_defaults(func=run)


# Orders listed by ``crbnet models`` for a model with an EPG truncation option.
TRUNCATION_ORDERS = (10, 25, 50, 100, 150)


def truncation_table(model: models.SignalModel) -> dict | None:
    """For a model with an EPG truncation option (``max_order``): the orders it keeps by
    default and the measured signal error of keeping fewer; None for other models."""
    if not hasattr(model, "truncation_error"):
        return None
    orders = [k for k in TRUNCATION_ORDERS if k < model.max_order]
    return {"max_order": model.max_order, "exact": bool(model.exact),
            "error": model.truncation_error(),
            "error_by_max_order": {str(k): model.truncation_error(k) for k in orders}}


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
        if d.get("truncation") is not None:
            _print_truncation(d["truncation"])
        defaults = ", ".join(f"{section}.{key}={value}" for section, table
                             in d["training_defaults"].items() for key, value in table.items())
        print(f"  sequence kinds {', '.join(d['sequence_kinds'])} (default "
              f"{d['sequence_kind']}); training defaults: "
              f"{defaults or 'the built-in ones'}")
        print()
    return 0


def _describe(model) -> dict:
    """The model's description plus its default sequence kind and the kinds it plays, its
    training defaults, its default
    sequence's RF figures (None without RF) and,
    for a model with an EPG truncation option, :func:`truncation_table`."""
    out = {**model.describe(), "sequence_kind": model.sequence_kind,
           "sequence_kinds": list(model.accepted_sequence_kinds()),
           "training_defaults": model_training_defaults(model),
           "sequence_rf": hardware.rf_summary(model.sequence)}
    table = truncation_table(model)
    if table is not None:
        out["truncation"] = table
    return out


def _print_truncation(table: dict) -> None:
    state = "exact" if table["exact"] else f"relative error {table['error']:.1e}"
    print(f"  EPG orders 0 … {table['max_order']} kept by default ({state}); option max_order "
          "keeps fewer, measured max relative signal error for T1 ≤ 5 s, T2 ≤ 3 s:")
    print("    " + ", ".join(f"max_order {k}: {e:.1e}"
                             for k, e in table["error_by_max_order"].items()))
