"""The in-vivo part of ``crbnet demo``: the shipped network (examples/invivo/network.pt) on the
shipped brain slice, its maps as a figure and white/grey-matter medians next to published
healthy white-matter values, as report.md lines. Also the table formatting the README's in-vivo
table and ``benchmarks/bench_invivo_maps.py`` share."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from crbnet.errors import InputError

_logger = logging.getLogger(__name__)

#: Where the slice and the network ship, relative to the repository root.
EXAMPLE_DIR = Path(__file__).resolve().parents[3] / "examples" / "invivo"
BASIS_RANK = 15
#: Maps shown and tabulated (file stems of apply's output).
MAP_NAMES = ("m0s", "T1f", "T2f", "Rx", "T1s", "T2s", "TB1map", "omega0")
UNITS = {"m0s": "", "T1f": "s", "T2f": "s", "Rx": "1/s", "T1s": "s", "T2s": "s", "TB1map": "",
         "omega0": "rad/s"}
#: The parameter a map file holds, where the file's name is not the parameter's (B1 is written
#: as TB1map, the BIDS name).
PARAMETER_OF_MAP = {"TB1map": "B1"}
#: Shown as (scale, unit) in tables.
DISPLAY = {"m0s": (1.0, ""), "T1f": (1.0, "s"), "T2f": (1e3, "ms"), "Rx": (1.0, "1/s"),
           "T1s": (1.0, "s"), "T2s": (1e6, "µs"), "TB1map": (1.0, ""),
           "omega0": (1.0, "rad/s")}

UNCONSTRAINED_QMT = ("Assländer et al., Unconstrained quantitative magnetization transfer "
                     "imaging: disentangling T1 of the free and semi-solid spin pools, Imaging "
                     "Neuroscience 2024 (arXiv 2301.08394), healthy white matter")
ISSUE_QUOTE = ("value quoted for this model family in crbnet's issue 22; its source table was "
               "not checked here")
#: Published healthy white-matter values for this model family, with where each comes from.
PUBLISHED_WM: dict[str, tuple[str, str]] = {
    "m0s": ("≈ 0.212", UNCONSTRAINED_QMT),
    "T1f": ("≈ 1.84 s", UNCONSTRAINED_QMT),
    "T2f": ("≈ 75–80 ms", ISSUE_QUOTE),
    "Rx": ("≈ 15–17 1/s", ISSUE_QUOTE),
    "T1s": ("≈ 0.34 s", UNCONSTRAINED_QMT),
    "T2s": ("≈ 12 µs", ISSUE_QUOTE),
}


def format_cell(stats: Mapping[str, Any] | None, name: str) -> str:
    """'median (q1–q3)' in the display unit of ``name``, or '—'."""
    if not stats or stats.get("median") is None:
        return "—"
    scale = DISPLAY.get(name, (1.0, ""))[0]
    m, a, b = (stats[k] * scale for k in ("median", "q1", "q3"))
    digits = 3 if abs(m) < 10 else 4
    return f"{m:.{digits}g} ({a:.{digits}g}–{b:.{digits}g})"


def region_table(columns: Mapping[str, Mapping[str, Mapping[str, Any]]],
                 published: bool = True) -> list[str]:
    """Markdown table: one row per map, one column per ``"label": {map: stats}`` entry (stats
    as :func:`crbnet.imaging.tissue_regions.region_statistics` gives them per region), and the
    published white-matter value."""
    head = ["parameter", *columns] + (["published healthy WM"] if published else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in MAP_NAMES:
        unit = DISPLAY.get(name, (1.0, ""))[1]
        label = PARAMETER_OF_MAP.get(name, name)
        cells = [f"{label} ({unit})" if unit else label]
        cells += [format_cell(col.get(name), name) for col in columns.values()]
        if published:
            value = PUBLISHED_WM.get(name)
            cells.append(f"{value[0]} [{'a' if value[1] == UNCONSTRAINED_QMT else 'b'}]"
                         if value else "—")
        lines.append("| " + " | ".join(cells) + " |")
    if published:
        lines += ["", f"[a] {UNCONSTRAINED_QMT}. [b] {ISSUE_QUOTE}."]
    return lines


@dataclass
class InvivoResult:
    seconds: float              # reading and the network
    voxels: int
    statistics: dict            # {region: {map: stats}}
    figure: Path
    total_seconds: float        # with masks, statistics and the figure


def network_maps(checkpoint: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Parameter maps (SI, by :data:`MAP_NAMES`) of the shipped slice by the network in
    ``checkpoint`` and the slice's mask: the network alone, without the M0, residual and CRB
    maps ``crbnet apply`` adds (those need a simulation per voxel)."""
    from crbnet.estimators.network import load
    from crbnet.imaging.apply import map_name
    from crbnet.imaging.matlab import MatSignals
    from crbnet.stats.subspace import load_basis

    network = load(checkpoint)
    basis = load_basis(EXAMPLE_DIR / "basis.mat", network.model.n_timepoints, rank=BASIS_RANK)
    estimator = network.in_basis(basis)
    source = MatSignals(EXAMPLE_DIR / "coeffs.mat")
    mask = source.mask
    data = source.read(tuple(slice(0, n) for n in source.spatial_shape))
    theta = estimator.predict(data[mask]).numpy()
    maps = {}
    for j, p in enumerate(estimator.parameters):
        image = np.zeros(mask.shape)
        image[mask] = theta[:, j]
        maps[map_name(estimator.model, p)] = image
    return maps, mask


def run_invivo(out_dir: Path, checkpoint: Path | None = None,
               log: Callable[[str], None] | None = None) -> InvivoResult:
    """The shipped network on the shipped slice: the figure ``out_dir/invivo_maps.png`` and
    WM/GM statistics."""
    from crbnet.imaging.tissue_regions import region_statistics, tissue_masks
    from crbnet.plots.invivo import plot_rows_of_maps

    checkpoint = checkpoint or EXAMPLE_DIR / "network.pt"
    log = log or _logger.info
    t0 = time.perf_counter()
    maps, mask = network_maps(checkpoint)
    seconds = time.perf_counter() - t0
    masks = tissue_masks(maps["m0s"], maps["T1f"], mask)
    stats = region_statistics(maps, masks)
    figure = out_dir / "invivo_maps.png"
    plot_rows_of_maps({"network": maps}, MAP_NAMES, UNITS, figure, masks={"network": mask})
    log(f"in vivo: network maps of {int(mask.sum())} voxels in {seconds:.1f} s")
    return InvivoResult(seconds=seconds, voxels=int(mask.sum()), statistics=stats,
                        figure=figure, total_seconds=time.perf_counter() - t0)


def report_lines(res: InvivoResult) -> list[str]:
    """report.md section."""
    n_wm = res.statistics["WM"]["m0s"]["n"]
    n_gm = res.statistics["GM"]["m0s"]["n"]
    return [
        "## In vivo: the shipped brain slice", "",
        f"The shipped network (examples/invivo/network.pt: mt_generalized_bloch with B1 and ω0, "
        f"CRB loss then bias-reduced fine-tuning) on the shipped slice (examples/invivo: 15 "
        f"subspace coefficient images, {res.voxels} brain voxels): {res.seconds:.1f} s for "
        f"reading and estimating, {res.total_seconds:.1f} s with this figure and table. "
        "`crbnet apply` adds M0, residual, goodness-of-fit and CRB maps (a simulation per "
        "voxel; README, section In vivo).", "",
        f"![in-vivo maps]({res.figure.name})", "",
        f"Medians (IQR) in white matter ({n_wm} voxels) and grey matter ({n_gm} voxels); "
        "tissue masks from the network's own maps (WM: m0s ≥ 0.15; GM: 0.06 ≤ m0s ≤ 0.13 and "
        "T1f ≤ 3 s; brain mask eroded by 2 voxels):", "",
        *region_table({"WM network": res.statistics["WM"], "GM network": res.statistics["GM"]}),
        ""]




def demo_section(out_dir: Path, log: Callable[[str], None] | None = None) -> list[str]:
    """report.md lines of the in-vivo part of ``crbnet demo`` (a note instead where the
    example folder or its network is missing, e.g. in an installed copy without examples/)."""
    checkpoint = EXAMPLE_DIR / "network.pt"
    if not checkpoint.is_file():
        return ["## In vivo: the shipped brain slice", "",
                f"Skipped: {checkpoint} not found (the slice and its network ship in the "
                "repository's examples/invivo, not in the installed package).", ""]
    log = log or _logger.info
    log("in vivo: the shipped network on the shipped brain slice")
    try:
        return report_lines(run_invivo(out_dir, checkpoint, log=log))
    except (InputError, OSError) as exc:   # the demo's other results stand without it
        log(f"in vivo: skipped ({exc})")
        return ["## In vivo: the shipped brain slice", "", f"Skipped: {exc}", ""]


__all__ = ["run_invivo", "report_lines", "demo_section", "region_table", "network_maps",
           "PUBLISHED_WM",
           "MAP_NAMES", "UNITS", "EXAMPLE_DIR"]
