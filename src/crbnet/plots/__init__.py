"""Figures. One module per area (``training``, ``evaluation``, ``maps``); all use the Agg backend
and write atomically through :func:`save_figure`."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from ..io import atomic_path  # noqa: E402


def save_figure(fig: "plt.Figure", path: str | Path, dpi: int = 120) -> None:
    """Save ``fig`` as PNG (temp file + rename) and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    plt.close(fig)


__all__ = ["save_figure", "plt"]
