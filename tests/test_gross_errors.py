"""Gross errors: local minima and alternative solutions told apart on hand-built data, and
reported by grid-mode evaluation on cases built to have them (a model whose fit cost has known
secondary minima, fits started in them; a fit that finds deeper minima at low SNR)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import crbnet
from crbnet import estimators, sequences
from crbnet.assessment.evaluate import evaluate, make_grid
from crbnet.assessment.gross_errors import classify_gross_errors, projected_cost
from crbnet.cli import app as cli
from crbnet.physics.models import ParameterSpec, SignalModel
from crbnet.reporting.evaluation import write_evaluation
from crbnet.stats.crb import crb

pytestmark = pytest.mark.usefixtures("one_thread")


class OffResonance(SignalModel):
    """``f(t) = exp(i·2π·Δf·t)`` at 32 samples 1 ms apart: the fit cost over Δf (M0 projected
    out) is one minus a periodogram, with the global minimum at the truth and secondary minima
    (side lobes) about every 1/(32 ms) ≈ 31 Hz beside it — local minima by construction."""

    name = "off_resonance_test"
    sequence_kind = "times"
    specs = (ParameterSpec("df", "Hz", (-200.0, 200.0), (-150.0, 150.0), 0.0, False,
                           "off-resonance frequency"),)

    @classmethod
    def default_sequence(cls) -> sequences.TimesSequence:
        return sequences.TimesSequence(times=1e-3 * np.arange(1, 33))

    def _simulate(self, p: dict[str, torch.Tensor]) -> torch.Tensor:
        df = p["df"][:, None]
        t = torch.as_tensor(self.sequence.times, dtype=df.dtype, device=df.device)
        phase = 2 * math.pi * df * t
        return torch.polar(torch.ones_like(phase), phase)


@pytest.fixture(scope="module")
def model():
    return OffResonance()


def test_local_minimum_and_alternative_solution_are_told_apart():
    model = crbnet.get_model("t2_decay")
    truth = torch.tensor([[0.05], [0.05], [0.05]], dtype=torch.float64)
    other = torch.tensor([[0.02]], dtype=torch.float64)
    # voxel 0: data made at T2 = 0.02 -> an estimate of 0.02 fits better than the truth
    # voxel 1: data made at the truth -> an estimate of 0.02 fits worse: a local minimum
    # voxel 2: data at the truth, estimate at the truth: no gross error
    y = torch.cat([model.simulate(other), model.simulate(truth[1:])]) * (0.6 - 0.8j)
    bound = crb(model, truth, sigma=1e-3)
    est = torch.tensor([[0.02], [0.02], [0.05]], dtype=torch.float64)
    out = classify_gross_errors(model, y, est, truth, bound)
    assert out["gross"].tolist() == [True, True, False]
    assert out["alternative"].tolist() == [True, False, False]
    assert out["local_minimum"].tolist() == [False, True, False]


def test_the_built_model_has_secondary_minima(model):
    """The premise of the tests below, checked on the noiseless cost: minima beside the truth,
    each at a cost well above the truth's."""
    grid = torch.linspace(-200, 200, 801, dtype=torch.float64)[:, None]
    y = model.simulate(torch.zeros(1, 1, dtype=torch.float64)).repeat(801, 1)
    cost = projected_cost(model, grid, y)
    inner = (cost[1:-1] < cost[:-2]) & (cost[1:-1] < cost[2:])
    minima = grid[1:-1][inner, 0]
    assert 0.0 in minima.tolist() and len(minima) >= 6
    assert float(cost[400]) == pytest.approx(0.0, abs=1e-9)            # the truth: Δf = 0
    side = cost[1:-1][inner & (grid[1:-1, 0] != 0)]
    assert float(side.min()) > 0.9 * 32                                 # ‖y‖² = 32


def test_grid_evaluation_reports_local_minima_of_a_badly_started_fit(model, tmp_path):
    # One start from a two-atom dictionary (Δf = ±150 Hz): a truth at 0 Hz is 150 Hz away, so
    # every fit descends into a side lobe of its start — a local minimum, cost above the truth's.
    bad = estimators.get("nlls", model, n_starts=1, start_points=2)
    assert bad.start_dictionary.atoms_theta[:, 0].tolist() == [-150.0, 150.0]
    grid = make_grid(model, 5)                       # -120, -60, 0, 60, 120 Hz
    result = evaluate(bad, grid, snr=50, realizations=8, seed=0)
    frac = result.gross_error_fractions()
    assert frac["local_minimum_fraction"][2] == 1.0
    np.testing.assert_array_equal(frac["alternative_fraction"], 0.0)
    np.testing.assert_array_equal(frac["local_minimum_fraction"], frac["gross_fraction"])
    summary = result.gross_error_summary()
    assert summary["n_local_minimum"] == int(round(frac["local_minimum_fraction"].sum() * 8))
    assert summary["local_minimum_fraction"] == pytest.approx(
        frac["local_minimum_fraction"].mean())
    assert summary["local_minimum_fraction"] > 0.2
    # the same fit with the default starts (a dense start dictionary) has no gross error at all:
    # the local minima came from the starts, not from the classification
    good = evaluate(estimators.get("nlls", model), grid, snr=50, realizations=8, seed=0)
    assert good.gross_error_summary()["n_gross"] == 0
    # written to the JSON (summary and per point) and the PNG
    paths = write_evaluation(result, tmp_path / "ev")
    doc = json.loads(paths["json"].read_text())
    assert doc["gross_errors"]["local_minimum_fraction"] == summary["local_minimum_fraction"]
    assert doc["points"]["local_minimum_fraction"] == frac["local_minimum_fraction"].tolist()
    assert paths["png"].stat().st_size > 10_000


def test_a_well_started_fit_at_low_snr_finds_alternative_solutions(model):
    # At SNR 0.5 the noise sometimes makes a side lobe deeper than the truth's lobe; NLLS with
    # dense starts finds that deeper minimum: gross errors at a cost *below* the truth's.
    result = evaluate(estimators.get("nlls", model), make_grid(model, 5), snr=0.5,
                      realizations=10, seed=0)
    summary = result.gross_error_summary()
    assert summary["n_alternative"] >= 3
    assert summary["n_local_minimum"] == 0
    assert summary["n_gross"] == summary["n_alternative"]


def test_dictionary_estimates_are_classified_too(model):
    # three atoms (-150, 0, 150 Hz): off-atom truths at high SNR end at an atom that fits worse
    # than the truth (the grid spacing, reported as "local minimum"); the truth on an atom is
    # exact
    dictionary = estimators.get("dictionary", model, n_points=3)
    assert dictionary.atoms_theta[:, 0].tolist() == [-150.0, 0.0, 150.0]
    result = evaluate(dictionary, make_grid(model, 5), snr=50, realizations=4, seed=0)
    frac = result.gross_error_fractions()
    np.testing.assert_array_equal(frac["local_minimum_fraction"], [1, 1, 0, 1, 1])
    np.testing.assert_array_equal(frac["alternative_fraction"], 0.0)


def test_evaluate_cli_grid_mode_prints_and_writes_the_split(tmp_path, capsys):
    out = tmp_path / "ev"
    assert cli.main(["evaluate", "--method", "dictionary", "--option", "n_points=3", "--model",
                     "t2_decay", "--snr", "1000", "--grid", "4", "--realizations", "3",
                     "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "local minima" in printed and "alternative solutions" in printed
    doc = json.loads((out / "evaluation.json").read_text())
    gross = doc["gross_errors"]
    # no grid point of the training range sits on one of the three atoms (its ends and middle)
    assert gross["n_realizations"] == 12 and gross["local_minimum_fraction"] == 1.0
    assert gross["alternative_fraction"] == 0.0 and "cost" in doc["gross_errors_definition"]
    assert doc["points"]["local_minimum_fraction"] == [1.0] * 4
