"""Figures. One module per area (``training``, ``evaluation``, ``maps``). Figures are built
with matplotlib's object API on their own Agg canvas (:func:`subplots`), so importing or using
crbnet never changes the user's matplotlib backend or pyplot state; :func:`save_figure` writes
atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from crbnet.files import atomic_path


def subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float] | None = None,
             layout: str | None = None, **kwargs: Any) -> tuple[Figure, Any]:
    """A figure on its own Agg canvas and its axes (as ``pyplot.subplots`` returns them)."""
    fig = Figure(figsize=figsize, layout=layout)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def get_cmap(name: str) -> matplotlib.colors.Colormap:
    """A registered colormap by name."""
    return matplotlib.colormaps[name]


def save_figure(fig: Figure, path: str | Path, dpi: int = 120) -> None:
    """Save ``fig`` as PNG (temp file + rename)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")


__all__ = ["save_figure", "subplots", "get_cmap"]
