"""The demo pipeline end to end at a tiny size: both networks, NLLS, grid evaluation, report."""

import json
import re

import pytest

from crbnet.reporting.demo import DemoConfig, run
from crbnet.errors import InputError

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(**changes) -> DemoConfig:
    cfg = DemoConfig(epochs=3, batches_per_epoch=4, pool_size=64, pool_refresh=16, val_size=32,
                     test_voxels=6, grid=2, realizations=4, bias_epochs=2,
                     bias_realizations=8, point_realizations=4)
    for key, value in changes.items():
        setattr(cfg, key, value)
    return cfg


def test_demo_writes_a_report_with_every_figure_it_names(tmp_path):
    out = tmp_path / "demo"
    # a third, registered loss rides along (the default is crb and mse)
    summary = run(out, tiny_config(losses=("crb", "mse", "log_mse")),
                  log=lambda *_: None)
    report = (out / "report.md").read_text()
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert figures, "the report embeds its figures"
    for figure in figures:
        assert (out / figure).is_file(), figure
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["parameters"] == summary["parameters"] == ["m0s", "T1f", "T2f", "Rx", "T2s"]
    labels = [row["label"] for row in on_disk["comparison"]]
    assert labels == ["CRB-net", "MSE-net", "log_mse-net", "bias-reduced net", "NLLS",
                      "NLLS (training box)"]
    assert {n: t["epochs"] for n, t in on_disk["training"].items()} == {
        "CRB-net": 3, "MSE-net": 3, "log_mse-net": 3, "bias-reduced net": 2}
    assert "(log estimate - log truth)^2" in report
    # the tissue-point table: CRB-net, bias-reduced net and NLLS in both boxes at WM and GM
    rows = on_disk["tissue_points"]["rows"]
    assert {r["estimator"] for r in rows} == {"CRB-net", "bias-reduced net", "NLLS",
                                              "NLLS (training box)"}
    assert {r["point"] for r in rows} == {"WM", "GM"}
    assert "## Bias at tissue points" in report and "bias-reduced net bias/√CRB" in report
    assert "crbnet train" in report            # how to run the full-scale version


def test_mse_net_gets_the_epochs_the_crb_net_completed(tmp_path):
    """A time guard that stops the CRB-net early (busy machine) must not leave the MSE-net with
    a different number of epochs: the comparison would then measure the machine."""
    summary = run(tmp_path / "demo", tiny_config(epochs=50, minutes_per_net=1e-4),
                  log=lambda *_: None)
    epochs = {n: t["epochs"] for n, t in summary["training"].items()}
    assert epochs["CRB-net"] < 50
    assert epochs["MSE-net"] == epochs["CRB-net"]


def test_demo_refuses_a_non_empty_output_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("user data")
    with pytest.raises(InputError, match="not empty"):
        run(tmp_path, tiny_config(), log=lambda *_: None)
    assert (tmp_path / "keep.txt").read_text() == "user data"



def test_demo_refuses_an_unknown_loss(tmp_path):
    with pytest.raises(InputError, match="unknown loss"):
        run(tmp_path / "x", tiny_config(losses=("crb", "nope")),
            log=lambda *_: None)
    assert not (tmp_path / "x").exists()


def test_an_interrupted_demo_leaves_nothing_behind(tmp_path, monkeypatch):
    """Networks already trained when the demo fails must not be left in a half-made folder."""
    import crbnet.assessment.compare

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(crbnet.assessment.compare, "compare", fail)
    out = tmp_path / "demo"
    with pytest.raises(OSError):
        run(out, tiny_config(), log=lambda *_: None)
    assert list(tmp_path.iterdir()) == []
