"""``crbnet evaluate`` over a grid: ``evaluation.json`` with its figure ``evaluation.png``."""

from __future__ import annotations

from pathlib import Path

from crbnet.reporting.result_files import write_result_files
from crbnet.assessment.evaluate import EvaluationResult
from crbnet.plots.evaluation import plot_evaluation


def write_evaluation(result: EvaluationResult, out_dir: str | Path) -> dict[str, Path]:
    """Write ``evaluation.json`` and ``evaluation.png`` into ``out_dir`` (both or neither);
    returns their paths by kind (``json``, ``png``)."""
    return write_result_files(out_dir, "evaluation", result.to_json(),
                              lambda png: plot_evaluation(result, png))


__all__ = ["write_evaluation"]
