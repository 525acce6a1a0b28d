"""The reporting layer: library results save data only, crbnet.reporting writes the figures
beside them, and the figures stay readable with many series (bounded size, legends off the
data, series side by side instead of on top of each other)."""

from __future__ import annotations

import json

import numpy as np

from crbnet.assessment.compare import compare, make_comparison_set
from crbnet.assessment.point_study import study, tissue_points
from crbnet.estimators import protocol
from crbnet.physics import models
from crbnet.plots import subplots
from crbnet.plots.comparison import plot_comparison
from crbnet.plots.points import _by_point
from crbnet.reporting.comparison import write_comparison
from crbnet.reporting.points import write_point_study

PNG = b"\x89PNG\r\n\x1a\n"


def _png_size(path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == PNG
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def test_results_save_data_and_reporting_adds_the_figure(tmp_path):
    model = models.get("t2_decay")
    test = make_comparison_set(model, 16, snr=50, seed=0)
    nlls = protocol.get("nlls", model)
    result = compare([("nlls", nlls)], model=model, test=test)
    assert sorted(p.name for p in result.save(tmp_path / "data").values()) == [
        "comparison.json", "comparison.md"]
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [
        "comparison.json", "comparison.md"]
    paths = write_comparison(result, tmp_path / "report")
    assert json.loads(paths["json"].read_text()) == json.loads(
        (tmp_path / "data" / "comparison.json").read_text())
    assert _png_size(paths["png"])[0] > 300

    points = tissue_points(model, "WM,GM")
    point_result = study([("nlls", nlls)], points, [50.0], realizations=4, seed=0,
                         classify=False)
    assert [p.name for p in point_result.save(tmp_path / "pd").values()] == ["points.json"]
    written = write_point_study(point_result, tmp_path / "pr")
    assert sorted(p.name for p in written.values()) == ["points.json", "points.png"]


def test_comparison_figure_stays_page_sized_with_many_series(tmp_path):
    params = ("m0s", "T1f", "T2f", "Rx", "T1s", "T2s")
    rows = [{"label": f"estimator {i}", "voxels_per_second": 10.0 ** (2 + i / 3),
             "mse_over_crb": {p: 0.5 + i + j for j, p in enumerate(params)}}
            for i in range(8)]
    plot_comparison(rows, params, tmp_path / "c.png", title="many")
    width, height = _png_size(tmp_path / "c.png")
    assert width <= 1600 and height <= 900, (width, height)    # was 5.3 k px wide


def test_one_snr_puts_estimators_side_by_side_with_one_legend_entry_each():
    from types import SimpleNamespace as NS

    labels, names = ["a", "b", "c", "d"], ["WM", "GM"]
    stats = {label: {100.0: {k: np.zeros((2, 1)) for k in (
        "bias_over_sqrt_crb", "bias_over_sqrt_crb_se", "std_over_sqrt_crb",
        "std_over_sqrt_crb_se")}} for label in labels}
    fake = NS(parameters=("T2",), points=NS(names=names, sweep=None), labels=labels,
              snrs=[100.0], stats=stats)
    fig, axes = subplots(2, 1, squeeze=False)
    handles = _by_point(fake, axes)
    assert [h.get_label() for h in handles] == labels       # one entry per estimator
    xs = [bars.lines[0].get_xdata() for bars in axes[0, 0].containers]
    at_wm = sorted(float(x[0]) for x in xs)
    assert len(at_wm) == 4 and min(np.diff(at_wm)) > 0.1     # no two series at one x
