"""``crbnet compare``: ``comparison.json``, ``comparison.md`` and the figure ``comparison.png``."""

from __future__ import annotations

from pathlib import Path

from crbnet import files
from crbnet.assessment.compare import ComparisonResult
from crbnet.plots.comparison import plot_comparison


def write_comparison(result: ComparisonResult, out_dir: str | Path) -> dict[str, Path]:
    """Write the comparison's JSON, markdown table and figure into ``out_dir`` (all three or
    none); returns their paths by kind (``json``, ``md``, ``png``)."""
    out_dir = Path(out_dir)
    paths = {"json": out_dir / "comparison.json", "md": out_dir / "comparison.md",
             "png": out_dir / "comparison.png"}
    with files.atomic_paths(list(paths.values())) as tmps:
        tmp = dict(zip(paths, tmps))
        files.write_json(tmp["json"], result.to_json())
        files.write_text(tmp["md"], result.to_markdown())
        plot_comparison(result.rows, result.parameters, tmp["png"],
                        title=f"{result.model}: {result.n_voxels} test voxels, SNR "
                              f"{result.snr:g} (|M0|/σ)")
    return paths


__all__ = ["write_comparison"]
