"""Stable public name ``crbnet.evaluate`` (used in the README and by user code); the implementation
lives in :mod:`crbnet.assessment.evaluate`."""

from crbnet.assessment.evaluate import (  # noqa: F401
    METRICS,
    SNR_DEFINITION,
    EvaluationResult,
    Grid,
    evaluate,
    make_grid,
    sample_points,
)

__all__ = ["evaluate", "make_grid", "sample_points", "Grid", "EvaluationResult", "METRICS", "SNR_DEFINITION"]
