"""``crbnet evaluate --points``: ``points.json`` with its figure ``points.png``."""

from __future__ import annotations

from pathlib import Path

from crbnet.reporting.result_files import write_result_files
from crbnet.assessment.point_study import PointStudy
from crbnet.plots.points import plot_point_study


def write_point_study(study: PointStudy, out_dir: str | Path) -> dict[str, Path]:
    """Write ``points.json`` and ``points.png`` into ``out_dir`` (both or neither); returns
    their paths by kind (``json``, ``png``)."""
    return write_result_files(out_dir, "points", study.to_json(),
                              lambda png: plot_point_study(study, png))


__all__ = ["write_point_study"]
