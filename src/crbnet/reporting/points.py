"""``crbnet evaluate --points``: ``points.json`` with its figure ``points.png``."""

from __future__ import annotations

from pathlib import Path

from crbnet import files
from crbnet.assessment.point_study import PointStudy
from crbnet.plots.points import plot_point_study


def write_point_study(study: PointStudy, out_dir: str | Path) -> dict[str, Path]:
    """Write ``points.json`` and ``points.png`` into ``out_dir`` (both or neither); returns
    their paths by kind (``json``, ``png``)."""
    out_dir = Path(out_dir)
    paths = {"json": out_dir / "points.json", "png": out_dir / "points.png"}
    with files.atomic_paths(list(paths.values())) as tmps:
        tmp = dict(zip(paths, tmps))
        files.write_json(tmp["json"], study.to_json())
        plot_point_study(study, tmp["png"])
    return paths


__all__ = ["write_point_study"]
