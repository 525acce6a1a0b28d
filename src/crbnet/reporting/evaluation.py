"""``crbnet evaluate`` over a grid: ``evaluation.json`` with its figure ``evaluation.png``."""

from __future__ import annotations

from pathlib import Path

from crbnet import files
from crbnet.assessment.evaluate import EvaluationResult
from crbnet.plots.evaluation import plot_evaluation


def write_evaluation(result: EvaluationResult, out_dir: str | Path) -> dict[str, Path]:
    """Write ``evaluation.json`` and ``evaluation.png`` into ``out_dir`` (both or neither);
    returns their paths by kind (``json``, ``png``)."""
    out_dir = Path(out_dir)
    paths = {"json": out_dir / "evaluation.json", "png": out_dir / "evaluation.png"}
    with files.atomic_paths(list(paths.values())) as tmps:
        tmp = dict(zip(paths, tmps))
        files.write_json(tmp["json"], result.to_json())
        plot_evaluation(result, tmp["png"])
    return paths


__all__ = ["write_evaluation"]
