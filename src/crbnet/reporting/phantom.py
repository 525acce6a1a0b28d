"""``crbnet phantom``: the figure ``truth.png`` of the phantom's true maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from crbnet.imaging.phantom import Phantom
from crbnet.plots.maps import plot_parameter_maps


def truth_figure(phantom: Phantom, folder: Path) -> list[str]:
    """Draw ``truth.png`` (true parameter maps, |M0| and M0 phase, central slice) into
    ``folder``; returns the names written. Pass it as ``save_phantom(..., figures=...)``."""
    model = phantom.model
    maps = dict(phantom.truth)
    maps["|M0|"] = np.abs(phantom.m0)
    maps["M0 phase"] = np.angle(phantom.m0)
    units = {p: model.spec(p).unit for p in phantom.truth}
    units.update({"|M0|": "a.u.", "M0 phase": "rad"})
    plot_parameter_maps(maps, units, Path(folder) / "truth.png", mask=phantom.mask,
                        title=f"phantom truth: {model.name}, {phantom.field_strength:g} T, "
                              f"SNR {phantom.snr:g} (|M0|/σ)")
    return ["truth.png"]


__all__ = ["truth_figure"]
