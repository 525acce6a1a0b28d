"""``crbnet compare``: ``comparison.json``, ``comparison.md`` and the figure ``comparison.png``."""

from __future__ import annotations

from pathlib import Path

from crbnet.reporting.result_files import write_result_files
from crbnet.assessment.compare import ComparisonResult
from crbnet.plots.comparison import plot_comparison


def write_comparison(result: ComparisonResult, out_dir: str | Path) -> dict[str, Path]:
    """Write the comparison's JSON, markdown table and figure into ``out_dir`` (all three or
    none); returns their paths by kind (``json``, ``md``, ``png``)."""
    title = f"{result.model}: {result.n_voxels} test voxels, SNR {result.snr:g} (|M0|/σ)"
    return write_result_files(
        out_dir, "comparison", result.to_json(),
        lambda png: plot_comparison(result.rows, result.parameters, png, title=title),
        texts={"md": result.to_markdown()})


__all__ = ["write_comparison"]
