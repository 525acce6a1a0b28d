"""Evaluation against the CRB and the comparison table: metrics on an estimator with known
bias and variance, grids, infinite CRBs, files, and the evaluate/compare commands."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import crbnet
from crbnet.assessment.compare import compare, make_comparison_set, resolve_estimators
from crbnet.assessment.evaluate import Grid, evaluate, make_grid
from crbnet.cli.app import main
from crbnet.errors import InputError
from crbnet.estimators import DictionaryEstimator
from crbnet.stats.crb import crb
from crbnet.reporting.comparison import write_comparison
from crbnet.reporting.evaluation import write_evaluation

pytestmark = pytest.mark.usefixtures("one_thread")


class KnownErrorEstimator:
    """Truth + β·√CRB + γ·√CRB·N(0, 1) per parameter, so the expected metrics are
    bias/√CRB = β, std/√CRB = γ, MSE/CRB = β² + γ².

    It finds the truth by matching against the evaluation points themselves (a dictionary of
    exactly those points, far apart relative to the noise); the CRB comes from crbnet.stats.crb at
    the evaluation SNR.
    """

    name = "known-error"

    def __init__(self, model, points: torch.Tensor, snr: float, beta, gamma, seed: int = 0,
                 fail_every: int = 0) -> None:
        self.model = model
        self.lookup = DictionaryEstimator(model, atoms=points)
        self.points = points
        # CRB std of each point; 0 where infinite (such a point gets the bare truth).
        sd = crb(model, points, sigma=1.0 / snr, warn=False).sqrt()
        self.sd = torch.where(torch.isfinite(sd), sd, torch.zeros_like(sd))
        self.beta = torch.as_tensor(beta, dtype=torch.float64)
        self.gamma = torch.as_tensor(gamma, dtype=torch.float64)
        self.generator = torch.Generator().manual_seed(seed)
        self.fail_every = fail_every
        self.calls = 0

    @property
    def parameters(self):
        return self.model.parameters

    def predict(self, signals):
        index, _ = self.lookup.match(signals)
        truth, sd = self.points[index], self.sd[index]
        z = torch.randn(truth.shape, generator=self.generator, dtype=torch.float64)
        out = truth + self.beta * sd + self.gamma * sd * z
        if self.fail_every:
            out[:: self.fail_every, 0] = math.nan
        return out


@pytest.fixture(scope="module")
def t2():
    return crbnet.get_model("t2_decay")


def test_metrics_match_known_bias_and_std(t2):
    grid = make_grid(t2, 5)
    beta, gamma, R = 0.7, 1.6, 3000
    est = KnownErrorEstimator(t2, grid.theta, snr=100, beta=[beta], gamma=[gamma], seed=1)
    result = evaluate(est, grid, snr=100, realizations=R, seed=2)
    tol_bias = 4 * gamma / math.sqrt(R)              # 4 σ of a mean of R draws
    tol_std = 4 * gamma / math.sqrt(2 * (R - 1))     # 4 σ of a sample std
    np.testing.assert_allclose(result.bias_over_sqrt_crb[:, 0], beta, atol=tol_bias)
    np.testing.assert_allclose(result.std_over_sqrt_crb[:, 0], gamma, atol=tol_std)
    np.testing.assert_allclose(result.mse_over_crb[:, 0], beta ** 2 + gamma ** 2,
                               atol=2 * beta * tol_bias + 2 * gamma * tol_std)
    # Same numbers in SI units: bias and std are multiples of the CRB standard deviation.
    np.testing.assert_allclose(result.bias[:, 0] / np.sqrt(result.crb[:, 0]),
                               result.bias_over_sqrt_crb[:, 0], rtol=1e-12)
    summary = result.summary()["T2"]
    assert summary["n_points"] == 5 and summary["n_points_infinite_crb"] == 0
    assert abs(summary["bias_over_sqrt_crb"] - beta) < tol_bias
    assert abs(summary["std_over_sqrt_crb"] - gamma) < tol_std
    assert result.n_voxels == 5 * R and result.voxels_per_second > 0


def test_failed_estimates_are_counted_and_left_out():
    """NaN estimates (every 7th voxel of each predict call) are counted per point and left out
    of the statistics; realizations split over several predict calls merge exactly."""
    model = crbnet.get_model("t2_decay")
    grid = make_grid(model, 3)
    est = KnownErrorEstimator(model, grid.theta, snr=50, beta=[-0.3], gamma=[0.5], seed=3,
                              fail_every=7)
    # 700 realizations per point in calls of 500 + 200 voxels.
    result = evaluate(est, grid, snr=50, realizations=700, seed=4, batch_size=500)
    per_point = math.ceil(500 / 7) + math.ceil(200 / 7)
    np.testing.assert_array_equal(result.n_failed, [per_point] * 3)
    assert np.all(np.isfinite(result.mse_over_crb))
    n_ok = 700 - per_point
    np.testing.assert_allclose(result.bias_over_sqrt_crb[:, 0], -0.3,
                               atol=4 * 0.5 / math.sqrt(n_ok))
    np.testing.assert_allclose(result.std_over_sqrt_crb[:, 0], 0.5,
                               atol=4 * 0.5 / math.sqrt(2 * n_ok))
    assert result.to_json()["n_failed_estimates"] == 3 * per_point


def test_infinite_crb_points_are_excluded_and_reported(tmp_path):
    # Without a semi-solid pool (m0s = 0) the exchange rate and T2s leave no trace in the signal.
    mt = crbnet.get_model("mt_hybrid_state", fixed={"B1": 1.0, "T1s": 1.0, "T1f": 1.2,
                                                    "T2f": 0.07})
    assert mt.parameters == ("m0s", "Rx", "T2s")
    points = torch.cat([mt.theta_from_dict({"m0s": 0.0}, fill_defaults=True),
                        mt.theta_from_dict({}, fill_defaults=True)])
    est = KnownErrorEstimator(mt, points, snr=100, beta=[0.0] * 3, gamma=[1.0] * 3, seed=5)
    result = evaluate(est, Grid(theta=points), snr=100, realizations=4, seed=6)
    summary = result.summary()
    for p in ("Rx", "T2s"):
        assert summary[p]["n_points_infinite_crb"] == 1 and summary[p]["n_points"] == 1
        assert summary[p]["points_infinite_crb"][0][0] == 0.0
        j = mt.parameters.index(p)
        assert math.isnan(result.mse_over_crb[0, j]) and math.isfinite(result.mse_over_crb[1, j])
    assert summary["m0s"]["n_points"] == 2
    paths = write_evaluation(result, tmp_path / "ev")
    text = paths["json"].read_text()
    doc = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert doc["summary"]["T2s"]["n_points_infinite_crb"] == 1
    assert doc["points"]["mse_over_crb"][0][mt.parameters.index("T2s")] is None
    assert paths["png"].stat().st_size > 10_000


def test_make_grid():
    fisp = crbnet.get_model("fisp_mrf")
    grid = make_grid(fisp, 4)
    assert grid.theta.shape == (16, 2) and grid.shape == (4, 4)
    t1 = grid.axes["T1"]
    lo, hi = fisp.spec("T1").train_range
    assert lo < t1.min() and t1.max() < hi                      # cell centres, not edges
    np.testing.assert_allclose(t1[1:] / t1[:-1], (hi / lo) ** 0.25)   # log-spaced cells
    np.testing.assert_array_equal(grid.theta[:4, 1].numpy(), grid.axes["T2"])   # C order
    mt = crbnet.get_model("mt_hybrid_state")
    grid = make_grid(mt, {"T1f": 3, "m0s": 2}, axes=["T1f", "m0s"], values={"Rx": 20.0})
    assert grid.shape == (3, 2) and grid.theta.shape == (6, 6)
    assert torch.all(grid.theta[:, mt.parameters.index("Rx")] == 20.0)
    assert torch.all(grid.theta[:, mt.parameters.index("T2f")] == mt.spec("T2f").default)
    assert grid.fixed_values["Rx"] == 20.0
    for bad in (dict(axes=["T1f"]), dict(axes=["T1f", "B1"]), dict(axes=["T1f", "T1f"]),
                dict(ranges={"T1f": (2.0, 1.0)})):
        with pytest.raises(InputError):
            make_grid(mt, 3, **bad)
    with pytest.raises(InputError):
        make_grid(fisp, 0)


def test_evaluate_rejects_bad_arguments(t2):
    est = DictionaryEstimator(t2, n_points=50)
    grid = make_grid(t2, 2)
    with pytest.raises(InputError):
        evaluate(est, grid, snr=-1)
    with pytest.raises(InputError):
        evaluate(est, grid, realizations=1)
    with pytest.raises(InputError):
        evaluate(est, torch.tensor([[-1.0]]))


def test_compare_scores_estimators_on_the_same_signals(tmp_path, t2):
    model, estimators = resolve_estimators(["dictionary", "nlls"], model=t2,
                                           baseline_options={"nlls": {"n_starts": 1}})
    test = make_comparison_set(model, 400, snr=100, seed=0)
    result = compare(estimators, test=test)
    rows = {r["label"]: r for r in result.rows}
    assert set(rows) == {"dictionary", "nlls"}
    # NLLS is efficient: MSE/CRB near 1 (σ of a mean of 400 χ²₁ ≈ 0.07).
    assert abs(rows["nlls"]["mse_over_crb"]["T2"] - 1) < 0.25
    # Score agrees with a direct computation on the shared test set.
    direct = ((estimators[1][1].predict(test.signals) - test.theta) ** 2 / test.crb).mean()
    assert rows["nlls"]["mse_over_crb"]["T2"] == pytest.approx(float(direct), rel=1e-12)
    paths = write_comparison(result, tmp_path)
    md = paths["md"].read_text()
    assert "| nlls |" in md and "| dictionary |" in md and "MSE/CRB T2" in md
    doc = json.loads(paths["json"].read_text())
    assert doc["rows"][0]["voxels_per_second"] > 0 and "snr_definition" in doc
    assert paths["png"].exists()


# ---- commands ---------------------------------------------------------------------------------
def test_evaluate_and_compare_commands(tmp_path, capsys):
    rc = main(["evaluate", "--method", "dictionary", "--model", "t2_decay", "--out",
               str(tmp_path / "ev"), "--grid", "3", "--realizations", "20", "--snr", "80"])
    assert rc == 0
    doc = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert doc["snr"] == 80 and doc["realizations"] == 20 and len(doc["points"]["theta"]) == 3
    assert set(doc["summary"]["T2"]) >= {"mse_over_crb", "bias_over_sqrt_crb",
                                         "std_over_sqrt_crb"}
    assert (tmp_path / "ev" / "evaluation.png").exists()
    rc = main(["compare", "--model", "t2_decay", "--out", str(tmp_path / "cmp"), "--voxels",
               "50", "dictionary", "nlls", "--losses", "relative_mse,log_mse"])
    assert rc == 0
    assert "| dictionary |" in capsys.readouterr().out
    assert (tmp_path / "cmp" / "comparison.md").exists()
    rows = json.loads((tmp_path / "cmp" / "comparison.json").read_text())["rows"]
    for row in rows:
        rel, log = row["losses"]["relative_mse"], row["losses"]["log_mse"]
        # small relative errors: log(θ̂/θ) ≈ (θ̂ − θ)/θ, so the two losses nearly agree
        assert 0 < rel < 0.1 and log == pytest.approx(rel, rel=0.2)


@pytest.mark.parametrize("argv", [
    ["evaluate", "--method", "nlls", "--out", "X"],                                  # no model
    ["evaluate", "--method", "nlls", "--model", "t2_decay", "--out", "X", "--snr", "-3"],
    ["evaluate", "--method", "nlls", "--model", "t2_decay", "--out", "X", "--realizations", "1"],
    ["evaluate", "--method", "nlls", "--model", "t2_decay", "--out", "X", "--grid", "0"],
    ["evaluate", "--method", "nlls", "--model", "fisp_mrf", "--out", "X",
     "--grid-parameters", "T1,B1"],
    ["evaluate", "--method", "nlls", "--model", "t2_decay", "--out", "X", "--option", "x=1"],
    ["evaluate", "--checkpoint", "missing.pt", "--out", "X"],
    ["evaluate", "--checkpoint", "NOTACKPT", "--out", "X"],
    ["compare", "--out", "X", "nlls"],                                               # no model
    ["compare", "--out", "X", "--model", "t2_decay", "svm"],
    ["compare", "--out", "X", "--model", "t2_decay", "--voxels", "0", "nlls"],
    ["compare", "--out", "X", "NOTACKPT"],
    ["compare", "--out", "X", "--model", "t2_decay", "--losses", "bias_reduced", "nlls"],
    ["compare", "--out", "X", "--model", "t2_decay", "--losses", "nope", "nlls"],
])
def test_evaluate_and_compare_bad_input_exit_2(argv, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "NOTACKPT").write_bytes(b"this is not a checkpoint")
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("crbnet: error:") and err.count("\n") == 1, err
    assert not (tmp_path / "X").exists()
