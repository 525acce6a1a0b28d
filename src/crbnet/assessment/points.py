"""Tissue points, where estimators are studied: named tissues from the literature tables of
:mod:`crbnet.physics.tissues` (WM, GM, CSF, lesion), rows of a CSV file whose header names the
parameters, and sweeps of one parameter through its training range at those points
(:class:`Points`). The statistics at the points: :mod:`crbnet.assessment.point_study`.

A point gives every estimated parameter of a model: values the table or file leaves out take the
parameter's default; fixed parameters keep their fixed value.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch

from crbnet.errors import InputError
from crbnet.estimators.dictionary import parameter_axis
from crbnet.physics.models.base import SignalModel
from crbnet.physics.tissues import tissue_table


def _tissue_values(model: SignalModel, name: str) -> dict[str, float]:
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


@dataclass
class Points:
    """Named parameter points (SI, model order); ``sweep`` names the swept parameter."""

    names: list[str]
    theta: torch.Tensor
    sweep: str | None = None


def tissue_points(model: SignalModel, spec: str) -> Points:
    """``spec``: comma-separated tissue names of :mod:`crbnet.physics.tissues` (``WM,GM``) and/or CSV files
    (:func:`load_points`: a header of parameter names, an optional ``label`` or
    ``name`` column). Estimated parameters a table or file leaves out (e.g. B1) take the
    model's default."""
    names, theta = load_points(model, [spec])
    model.check_theta(theta)
    return Points(names, theta)


def sweep_points(model: SignalModel, base: Points, parameter: str, n: int = 9,
                 ranges: Mapping[str, tuple[float, float]] | None = None) -> Points:
    """``n`` values of ``parameter`` across its training range (cell centres; log-spaced for
    log-uniform parameters) at each base point, the other parameters held at its values."""
    if parameter not in model.parameters:
        raise InputError(f"--sweep: {parameter!r} is not estimated; estimated: "
                         f"{', '.join(model.parameters)}")
    if n < 2:
        raise InputError("a sweep needs at least 2 values")
    lo, hi = (ranges or {}).get(parameter, model.spec(parameter).train_range)
    values = parameter_axis(lo, hi, n, log=model.spec(parameter).log_uniform, centered=True)
    j = model.parameters.index(parameter)
    names, rows = [], []
    for name, theta in zip(base.names, base.theta):
        for v in values:
            row = theta.clone()
            row[j] = float(v)
            rows.append(row)
            names.append(f"{name}:{parameter}={v:.4g}")
    return Points(names, torch.stack(rows), sweep=parameter)


__all__ = ["Points", "load_points", "tissue_points", "sweep_points"]
