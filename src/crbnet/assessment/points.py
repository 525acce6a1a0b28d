"""Tissue points: named tissues from the phantom's literature tables (WM, GM, CSF, lesion) or
rows of a CSV file whose header names the parameters.

A point gives every estimated parameter of a model: values the table or file leaves out take the
parameter's default; fixed parameters keep their fixed value.
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from crbnet.errors import InputError
from crbnet.physics.models.base import SignalModel


def _tissue_values(model: SignalModel, name: str) -> dict[str, float]:
    from crbnet.imaging.phantom import tissue_table  # the phantom module is heavy; only here

    table = tissue_table(model)
    if name not in table:
        raise InputError(f"unknown tissue {name!r} for {model.name}; known: {', '.join(table)}")
    return {k: v for k, (v, _) in table[name].items() if k in model.parameters}


def _csv_rows(model: SignalModel, path: Path) -> list[tuple[str, dict[str, float]]]:
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read points file {path}: {exc}") from exc
    if not rows:
        raise InputError(f"{path}: no points (expected a header of parameter names and rows)")
    out = []
    for i, row in enumerate(rows, start=1):
        label = (row.pop("label", None) or row.pop("name", None) or f"{path.stem}[{i}]").strip()
        values: dict[str, float] = {}
        for key, text in row.items():
            key = (key or "").strip()
            if key not in model.all_parameters:
                raise InputError(f"{path}: unknown column {key!r}; parameters of {model.name}: "
                                 f"{', '.join(model.all_parameters)}")
            if key in model.parameters:
                try:
                    values[key] = float(text)
                except (TypeError, ValueError):
                    raise InputError(f"{path}: row {i}, {key}: {text!r} is not a number") from None
        out.append((label, values))
    return out


def load_points(model: SignalModel, specs: list[str]) -> tuple[list[str], torch.Tensor]:
    """Labels and parameters [N, P] (float64, SI) of the points ``specs`` name: tissue names
    (comma-separated lists allowed) or CSV files (a ``label`` column is optional)."""
    labelled: list[tuple[str, dict[str, float]]] = []
    for spec in specs:
        for item in (s.strip() for s in spec.split(",") if s.strip()):
            if item.lower().endswith(".csv"):
                labelled += _csv_rows(model, Path(item))
            else:
                labelled.append((item, _tissue_values(model, item)))
    if not labelled:
        raise InputError("no tissue points given")
    theta = torch.cat([model.theta_from_dict(v, fill_defaults=True) for _, v in labelled])
    return [label for label, _ in labelled], theta
