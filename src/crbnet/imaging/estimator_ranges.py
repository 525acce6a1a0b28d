"""The range each estimator knows per parameter, and the flags of estimates at its edges.

An estimate within :data:`EDGE_FRACTION` of that range's width (on a log scale for parameters
sampled log-uniformly) of either end says "at least this far", not "here": ``crbnet apply``
writes them to ``flags.nii.gz`` (bit j, value 2^j, for parameter j).
"""

from __future__ import annotations

import math

import numpy as np

from crbnet.estimators.protocol import Estimator
from crbnet.physics.models.base import SignalModel

#: Fraction of an estimator's range at either end whose estimates are flagged.
EDGE_FRACTION = 0.01


def estimator_ranges(estimator: Estimator) -> dict[str, tuple[float, float]]:
    """The range of each parameter an estimator knows: a network's training ranges, a
    dictionary's grid ranges, NLLS's box; else the model's training ranges."""
    model = estimator.model
    sampling = (getattr(estimator, "info", None) or {}).get("sampling")
    if isinstance(sampling, dict) and set(model.parameters) <= set(sampling):
        return {p: (float(sampling[p]["range"][0]), float(sampling[p]["range"][1]))
                for p in model.parameters}
    for attr in ("ranges", "bounds"):
        known = getattr(estimator, attr, None)
        if isinstance(known, dict) and set(model.parameters) <= set(known):
            return {p: (float(known[p][0]), float(known[p][1])) for p in model.parameters}
    return dict(model.train_ranges)


def edge_flags(theta: np.ndarray, model: SignalModel,
               ranges: dict[str, tuple[float, float]]) -> np.ndarray:
    """[..., P] bool: estimate within :data:`EDGE_FRACTION` of the range width of either end
    (or outside it); log scale for parameters sampled log-uniformly."""
    flags = np.zeros(theta.shape, dtype=bool)
    for j, p in enumerate(model.parameters):
        lo, hi = ranges[p]
        x = theta[..., j].astype(np.float64)
        if model.spec(p).log_uniform and lo > 0:
            with np.errstate(divide="ignore", invalid="ignore"):
                u = (np.log(np.maximum(x, 1e-300)) - math.log(lo)) / (math.log(hi) - math.log(lo))
        else:
            u = (x - lo) / (hi - lo)
        flags[..., j] = (u <= EDGE_FRACTION) | (u >= 1 - EDGE_FRACTION)
    return flags
