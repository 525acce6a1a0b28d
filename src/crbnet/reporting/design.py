"""``crbnet design``: the figure ``design.png`` of a design report (``design.json``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from crbnet.physics.sequences import Sequence
from crbnet.plots.design import plot_design


def write_design_figure(report: Mapping[str, Any], start: Sequence, designed: Sequence,
                        path: str | Path) -> Path:
    """Draw the controls before and after and the relative √CRB at the design points."""
    plot_design(report, start, designed, path)
    return Path(path)


__all__ = ["write_design_figure"]
