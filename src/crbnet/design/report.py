"""What a design run reports: settings, limits, cost history, and for the start and the result
per tissue point and parameter √CRB and relative √CRB, with the RF figures of each sequence."""

from __future__ import annotations

import dataclasses

import numpy as np

from crbnet.design.designer import DesignResult, SequenceDesigner
from crbnet.physics import hardware
from crbnet.physics.sequences import Sequence

SNR_NOTE = "SNR = |M0| / sigma, sigma the noise std of the real and of the imaginary part"


def sequence_figures(designer: SequenceDesigner, sequence: Sequence,
                     labels: list[str]) -> dict:
    """RF figures, limit violations, cost and per-point √CRB (SI) and √CRB/value of a sequence
    at the design's points (CRBs from crbnet.stats.crb)."""
    rel = designer.relative_std(sequence)
    points = designer.points.numpy()
    weights = designer.weights.numpy()
    per_point = {
        label: {p: {"value": float(points[i, j]), "sqrt_crb": float(rel[i, j] * abs(points[i, j])),
                    "relative_sqrt_crb": float(rel[i, j])}
                for j, p in enumerate(designer.model.parameters)}
        for i, label in enumerate(labels)}
    return {"hardware": hardware.rf_summary(sequence),
            "violations": hardware.violations(sequence, designer.space.limits),
            "cost": float(np.mean((rel ** 2 * weights).sum(-1))),
            "per_point": per_point}


def design_report(designer: SequenceDesigner, result: DesignResult, labels: list[str],
                  start_name: str) -> dict:
    """The content of design.json."""
    model = designer.model
    space = designer.space
    feasible_start = designer.controls.sequence(designer.controls.initial())
    return {
        "model": model.name,
        "parameters": list(model.parameters),
        "fixed": model.fixed,
        "snr": designer.snr,
        "snr_definition": SNR_NOTE,
        "cost_definition": "mean over points of sum_p w_p * CRB_p / value_p^2",
        "weights": dict(zip(model.parameters, designer.weights.tolist())),
        "limits": dataclasses.asdict(space.limits),
        "controls": {"kind": designer.controls.kind, "n_control": space.n_control,
                     "max_flip": space.max_flip, "optimize_tr": space.optimize_tr,
                     "tr_range": space.tr_range},
        "settings": {"start": start_name, "starts": designer.starts,
                     "max_minutes": designer.max_minutes,
                     "max_iterations": designer.max_iterations, "seed": designer.seed},
        "elapsed_s": result.elapsed,
        "runs": result.runs,
        "history": result.history,
        "start": sequence_figures(designer, model.sequence, labels),
        "start_within_limits": sequence_figures(designer, feasible_start, labels),
        "result": sequence_figures(designer, result.sequence, labels),
        "result_control_points": designer.controls.control_points(result.x),
    }
