"""Deprecated: use :mod:`crbnet.assessment.evaluate` (``crbnet.assessment.evaluate.evaluate``).
Every name still works and warns (DeprecationWarning)."""

from crbnet import _deprecated

__getattr__, __dir__ = _deprecated.forwarding(__name__, {
    name: "crbnet.assessment.evaluate" for name in (
        "evaluate", "make_grid", "sample_points", "Grid", "EvaluationResult", "METRICS",
        "SNR_DEFINITION")})
