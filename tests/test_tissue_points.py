"""Tissue-point statistics against hand-computed cases; gross-error classification; boxes."""

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

import crbnet
from crbnet.assessment.point_study import point_study, study, welch_test
from crbnet.assessment.points import Points, sweep_points, tissue_points
from crbnet.cli import app as cli
from crbnet.errors import InputError
from crbnet.stats.crb import crb


class OffsetEstimator:
    """Returns truth + offsets[r]·√CRB for the r-th realization of each point: a known set of
    estimates (no physics is replaced: signals are simulated as usual and ignored)."""

    name = "offsets"

    def __init__(self, model, theta, sigma, offsets):
        self.model = model
        self.parameters = model.parameters
        self.theta, self.offsets = theta, torch.tensor(offsets, dtype=torch.float64)
        self.root = crb(model, theta, sigma=sigma).sqrt()

    def predict(self, signals):
        n = signals.shape[0]
        if n == 2:                       # the evaluation's warm-up call
            return self.theta[:1].repeat(2, 1)
        R = len(self.offsets)
        g = n // R
        base = self.theta[:g].repeat_interleave(R, 0)
        return base + self.offsets.repeat(g)[:, None] * self.root[:g].repeat_interleave(R, 0)


def test_statistics_match_a_hand_computed_case():
    model = crbnet.get_model("t2_decay")
    points = Points(["a", "b"], torch.tensor([[0.05], [0.1]], dtype=torch.float64))
    snr = 40.0
    offsets = [-1.0, 0.0, 1.0, 2.0]          # in units of √CRB
    est = OffsetEstimator(model, points.theta, 1 / snr, offsets)
    s = point_study(est, points, snr, realizations=4, classify=True)
    x = np.array(offsets)
    mean, sd = x.mean(), x.std(ddof=1)           # 0.5, √(5/3)
    m4 = ((x - mean) ** 4).mean()
    se_var = math.sqrt((m4 - sd ** 4 * (4 - 3) / (4 - 1)) / 4)
    assert s["bias_over_sqrt_crb"][:, 0] == pytest.approx([mean, mean], rel=1e-9)
    assert s["bias_over_sqrt_crb_se"][:, 0] == pytest.approx([sd / 2, sd / 2], rel=1e-9)
    assert s["std_over_sqrt_crb"][:, 0] == pytest.approx([sd, sd], rel=1e-9)
    assert s["std_over_sqrt_crb_se"][:, 0] == pytest.approx([se_var / (2 * sd)] * 2, rel=1e-6)
    root = np.sqrt(s["crb"][:, 0])
    assert s["relative_bias_percent"][:, 0] == pytest.approx(100 * mean * root / [0.05, 0.1])
    assert s["mean"][:, 0] == pytest.approx([0.05, 0.1] + mean * root)
    assert (s["n"][:, 0] == 4).all()
    assert (s["gross_fraction"] == 0).all()        # all within 5 √CRB


def test_welch_test_and_bonferroni():
    g = np.random.default_rng(1)
    a, b = g.normal(0, 1, 50), g.normal(0.4, 2, 80)
    t, dof, p = welch_test(np.array(a.mean()), np.array(a.std(ddof=1)), np.array(50.0),
                           np.array(b.mean()), np.array(b.std(ddof=1)), np.array(80.0))
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert float(t) == pytest.approx(ref.statistic) and float(p) == pytest.approx(ref.pvalue)
    # two estimators on 2 points x 1 parameter x 2 SNRs: 4 tests, p multiplied by 4
    model = crbnet.get_model("t2_decay")
    points = Points(["a", "b"], torch.tensor([[0.05], [0.1]], dtype=torch.float64))
    e1 = OffsetEstimator(model, points.theta, 1 / 20, [-1.0, 0.0, 1.0, 2.0])
    e2 = OffsetEstimator(model, points.theta, 1 / 20, [-2.0, 0.0, 1.0, 1.0])
    res = study([("one", e1), ("two", e2)], points, [20.0, 20.0001], realizations=4)
    assert res.n_tests == 4
    test = res.test[20.0]
    assert np.allclose(test["p_adjusted"], np.minimum(1, 4 * test["p"]))
    rows = res.rows()
    assert {r["estimator"] for r in rows} == {"one", "two"}
    assert all("welch_p_bonferroni" in r for r in rows if r["estimator"] == "one")


def test_points_from_names_csv_and_sweep(tmp_path):
    model = crbnet.get_model("mt_hybrid_state", fixed={"T1s": 1.0, "B1": 1.0})
    wm = tissue_points(model, "WM")
    assert wm.names == ["WM"] and wm.theta[0, model.parameters.index("m0s")] == 0.25
    with pytest.raises(InputError, match="unknown tissue"):
        tissue_points(model, "WM,bone")
    csv = tmp_path / "p.csv"
    csv.write_text("name,m0s,T1f,T2f,Rx,T2s\nx,0.1,1.5,0.08,20,1e-5\n")
    assert tissue_points(model, str(csv)).theta[0].tolist() == [0.1, 1.5, 0.08, 20, 1e-5]
    (tmp_path / "part.csv").write_text("name,m0s\nx,0.1\n")     # the others: defaults
    part = tissue_points(model, str(tmp_path / "part.csv")).theta[0].tolist()
    assert part == [0.1] + [model.defaults[p] for p in model.parameters[1:]]
    (tmp_path / "bad.csv").write_text("name,m0s,bone\nx,0.1,3\n")
    with pytest.raises(InputError, match="unknown column"):
        tissue_points(model, str(tmp_path / "bad.csv"))
    sw = sweep_points(model, wm, "Rx", 3)
    j = model.parameters.index("Rx")
    lo, hi = model.spec("Rx").train_range
    assert sw.theta.shape == (3, 5) and sw.sweep == "Rx"
    assert ((sw.theta[:, j] > lo) & (sw.theta[:, j] < hi)).all()
    others = [i for i in range(5) if i != j]
    assert torch.equal(sw.theta[:, others], wm.theta[:, others].repeat(3, 1))


def test_evaluate_points_cli_two_boxes(tmp_path, capsys):
    out = tmp_path / "pts"
    assert cli.main(["evaluate", "--method", "nlls", "--model", "t2_decay", "--points", "WM,GM",
                     "--snr", "20,50", "--realizations", "8", "--against", "nlls@training",
                     "--out", str(out)]) == 0
    data = json.loads((out / "points.json").read_text())
    assert (out / "points.png").is_file()
    assert data["estimators"] == ["nlls", "nlls@training"] and data["snr"] == [20.0, 50.0]
    assert len(data["rows"]) == 2 * 2 * 2           # estimators x SNRs x points (1 parameter)
    first = [r for r in data["rows"] if r["estimator"] == "nlls"]
    assert all(0 <= r["welch_p_bonferroni"] <= 1 for r in first)
    assert "local minima" in capsys.readouterr().out
    rc = cli.main(["evaluate", "--method", "nlls", "--model", "t2_decay", "--snr", "20,50",
                   "--out", str(tmp_path / "x")])
    assert rc == 2


def test_compare_shows_both_boxes(tmp_path):
    from crbnet.assessment.compare import box_options, resolve_estimators, training_ranges

    out = tmp_path / "cmp"
    assert cli.main(["compare", "nlls", "--model", "t2_decay", "--bounds", "both", "--voxels",
                     "16", "--out", str(out)]) == 0
    rows = json.loads((out / "comparison.json").read_text())["rows"]
    assert [r["label"] for r in rows] == ["nlls@physical", "nlls@training"]
    assert all(0 <= r["local_minimum_fraction"] <= r["gross_fraction"] <= 1 for r in rows)
    model, [(_, est)] = resolve_estimators(["nlls@training"],
                                           model=crbnet.get_model("t2_decay"))
    assert est.bounds == training_ranges(model)
    assert box_options("dictionary", model, "physical", {}) == {"ranges": dict(model.bounds)}
    with pytest.raises(InputError, match="box after @"):
        resolve_estimators(["nlls@moon"], model=model)
