"""NLLS and dictionary matching: exactness on noiseless data, bounds, optimality, efficiency,
chunking, and the ``crbnet fit`` command."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import crbnet
from crbnet import estimators, sequences
from crbnet.assessment.evaluate import evaluate, make_grid
from crbnet.cli.app import main
from crbnet.errors import InputError
from crbnet.estimators import DictionaryEstimator, NLLSEstimator
from crbnet.stats.noise import add_noise, random_m0
from crbnet.stats.sampling import ParameterSampler

pytestmark = pytest.mark.usefixtures("one_thread")


def _complex_m0(n: int, seed: int) -> torch.Tensor:
    """Arbitrary complex M0: magnitudes 0.1–10 (log-uniform), uniform phases."""
    g = torch.Generator().manual_seed(seed)
    mag = torch.exp(math.log(0.1) + torch.rand(n, generator=g, dtype=torch.float64) * math.log(100))
    return torch.polar(mag, 2 * math.pi * torch.rand(n, generator=g, dtype=torch.float64))


def short_fisp(step: int = 5):
    """FISP-MRF with every ``step``-th TR of the default schedule (80 TRs for 5): the same
    physics at a fraction of the cost, to keep the tests fast."""
    seq = sequences.default_fisp_sequence()
    return crbnet.get_model("fisp_mrf", sequence=sequences.FISPSequence(
        flip=seq.flip[::step], TR=seq.TR[::step], TE=seq.TE, TI=seq.TI))


@pytest.fixture(scope="module")
def fisp():
    return short_fisp()


@pytest.fixture(scope="module")
def fisp_dictionary(fisp):
    """Plain matching (no sub-grid refinement): the tests of matching itself."""
    return DictionaryEstimator(fisp, n_points={"T1": 9, "T2": 7}, refine=False).build()


# ---- factory ---------------------------------------------------------------------------------
def test_factory_and_interface(fisp):
    nlls = estimators.get("nlls", fisp, n_starts=3)
    dic = estimators.get("dictionary", fisp, n_points=5)
    assert isinstance(nlls, NLLSEstimator) and nlls.n_starts == 3
    assert isinstance(dic, DictionaryEstimator) and dic.n_atoms == 25
    for est in (nlls, dic):
        assert est.model is fisp and est.parameters == ("T1", "T2") and isinstance(est.name, str)
        assert isinstance(est, crbnet.estimators.protocol.Estimator)
    with pytest.raises(InputError, match="unknown method"):
        estimators.get("svm", fisp)
    with pytest.raises(InputError, match="unknown option"):
        estimators.get("nlls", fisp, n_start=2)
    with pytest.raises(InputError):
        estimators.get("dictionary", fisp, ranges={"T1": (2.0, 1.0)})


# ---- dictionary matching -----------------------------------------------------------------------
def test_dictionary_recovers_grid_points_exactly_with_complex_m0(fisp, fisp_dictionary):
    d = fisp_dictionary
    order = torch.randperm(d.n_atoms, generator=torch.Generator().manual_seed(1))
    truth = d.atoms_theta[order]
    m0 = _complex_m0(d.n_atoms, seed=2)
    signals = m0[:, None] * fisp.simulate(truth)
    theta, m0_hat = d.predict_with_m0(signals)
    assert theta.dtype == torch.float64 and theta.shape == truth.shape
    assert torch.equal(theta, truth)
    # Only the discarded SVD energy (< 1e-6 of the atoms') limits the M0 accuracy.
    assert torch.allclose(m0_hat, m0, rtol=2e-3, atol=0)
    assert d.captured_energy >= 1 - 1e-6


def test_dictionary_full_rank_equals_brute_force_matching(fisp, fisp_dictionary):
    """In SVD space with k = T the match must be the plain maximum normalized inner product
    (checks the subspace conventions: conjugations, normalization)."""
    full = DictionaryEstimator(fisp, n_points={"T1": 9, "T2": 7}, rank=fisp.n_timepoints,
                               refine=False)
    g = torch.Generator().manual_seed(3)
    truth = ParameterSampler(fisp).sample(40, g)
    y = add_noise(random_m0(40, generator=g)[:, None] * fisp.simulate(truth), 0.05, g)
    atoms = fisp.simulate(full.atoms_theta)
    score = (y @ atoms.conj().T).abs() / atoms.norm(dim=1)       # |<f_a, y>| / ||f_a||
    best = score.argmax(1)
    theta, m0 = full.predict_with_m0(y)
    assert torch.equal(theta, full.atoms_theta[best])
    f = atoms[best]
    m0_ls = (f.conj() * y).sum(1) / (f.conj() * f).real.sum(1)
    assert torch.allclose(m0, m0_ls, rtol=1e-10, atol=1e-12)


def test_dictionary_chunked_equals_unchunked(fisp, fisp_dictionary):
    d = fisp_dictionary
    g = torch.Generator().manual_seed(4)
    truth = ParameterSampler(fisp).sample(50, g)
    y = add_noise(random_m0(50, generator=g)[:, None] * fisp.simulate(truth), 0.02, g)
    d.chunk_elements = 2 ** 22
    theta_all, m0_all = d.predict_with_m0(y)
    d.chunk_elements = 17          # 17 atoms per block, one voxel at a time
    try:
        theta_chunked, m0_chunked = d.predict_with_m0(y)
    finally:
        d.chunk_elements = 2 ** 22
    assert torch.equal(theta_chunked, theta_all)
    assert torch.allclose(m0_chunked, m0_all, rtol=1e-12, atol=0)
    # Building in small simulation chunks (two passes) gives the same dictionary.
    small = DictionaryEstimator(fisp, n_points={"T1": 9, "T2": 7}, simulate_chunk=10,
                                refine=False).build()
    assert small.basis.shape == d.basis.shape
    assert torch.equal(small.predict(y), theta_all)


def test_top_matches_are_distinct_and_separated(fisp, fisp_dictionary):
    d = fisp_dictionary
    y = fisp.simulate(d.atoms_theta[[5, 30, 60]])
    top = d.top_matches(y, 3, exclusion=2)
    assert top.shape == (3, 3)
    assert torch.equal(top[:, 0], torch.tensor([5, 30, 60]))
    grid = d.grid_index
    for row in top:
        for i in range(3):
            for j in range(i):
                assert (grid[row[i]] - grid[row[j]]).abs().max() > 2


def test_dictionary_rejects_bad_signals(fisp, fisp_dictionary):
    with pytest.raises(InputError, match="complex"):
        fisp_dictionary.predict(np.ones((2, fisp.n_timepoints)))
    with pytest.raises(InputError, match="time points"):
        fisp_dictionary.predict(np.ones((2, 7), dtype=complex))
    bad = np.ones((2, fisp.n_timepoints), dtype=complex)
    bad[1, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        fisp_dictionary.predict(bad)


# ---- NLLS ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, n", [("t2_decay", 20), ("ir_t1", 20), ("fisp_mrf", 4)])
def test_nlls_recovers_truth_on_noiseless_data(name, n):
    model = short_fisp(10) if name == "fisp_mrf" else crbnet.get_model(name)
    truth = ParameterSampler(model).sample(n, torch.Generator().manual_seed(5))
    m0 = _complex_m0(n, seed=6)
    fit = NLLSEstimator(model, n_starts=2, start_points=16).fit(
        m0[:, None] * model.simulate(truth))
    assert fit.converged.all()
    assert torch.allclose(fit.theta, truth, rtol=1e-9, atol=0)
    assert torch.allclose(fit.m0, m0, rtol=1e-9, atol=0)
    assert (fit.cost <= 1e-18 * (m0.abs() ** 2 * model.simulate(truth).abs().pow(2).sum(1))).all()


def test_nlls_respects_bounds():
    model = crbnet.get_model("t2_decay")
    truth = torch.tensor([[0.02], [0.06], [0.25]], dtype=torch.float64)
    y = 3j * model.simulate(truth)
    est = NLLSEstimator(model, bounds={"T2": (0.03, 0.1)})
    theta = est.predict(y)
    # The constrained optimum of a 1-D unimodal cost is the nearest bound.
    assert torch.equal(theta[:, 0], torch.tensor([0.03, 0.06, 0.1], dtype=torch.float64)) or \
        torch.allclose(theta[:, 0], torch.tensor([0.03, 0.06, 0.1], dtype=torch.float64),
                       rtol=1e-10, atol=0)
    assert (theta >= 0.03).all() and (theta <= 0.1).all()
    # Noisy data at low SNR: every estimate stays inside the box.
    g = torch.Generator().manual_seed(7)
    many = ParameterSampler(model).sample(300, g)
    noisy = add_noise(model.simulate(many), 0.2, g)
    theta = est.predict(noisy)
    assert (theta >= 0.03).all() and (theta <= 0.1).all()
    with pytest.raises(InputError):
        NLLSEstimator(model, bounds={"T2": (0.0, 0.1)})   # outside the model's bounds


def test_nlls_reaches_the_least_squares_optimum():
    """Independent check with scipy: from our estimate and from the truth, a tightly converged
    trust-region solver finds no lower cost, and both land on the same point."""
    scipy_opt = pytest.importorskip("scipy.optimize")
    model = crbnet.get_model("ir_t1")
    g = torch.Generator().manual_seed(8)
    truth = ParameterSampler(model).sample(6, g)
    y = add_noise(random_m0(6, generator=g)[:, None] * model.simulate(truth), 0.05, g)
    fit = NLLSEstimator(model).fit(y)
    assert fit.converged.all() and (fit.gradient_cosine < 1e-5).all()
    times = np.asarray(model.sequence.times)
    lo, hi = model.spec("T1").bounds
    for i in range(6):
        yi = y[i].numpy()

        def residual(x: np.ndarray) -> np.ndarray:
            r = (x[1] + 1j * x[2]) * (1 - 2 * np.exp(-times / x[0])) - yi
            return np.concatenate((r.real, r.imag))

        for start in (fit.theta[i, 0].item(), truth[i, 0].item()):
            m0 = complex(fit.m0[i])
            sol = scipy_opt.least_squares(residual, [start, m0.real, m0.imag], method="trf",
                                          bounds=([lo, -np.inf, -np.inf], [hi, np.inf, np.inf]),
                                          xtol=1e-15, ftol=1e-15, gtol=1e-15, x_scale="jac")
            scipy_cost = float(np.sum(sol.fun ** 2))
            assert fit.cost[i].item() <= scipy_cost * (1 + 1e-10)
            assert abs(sol.x[0] - fit.theta[i, 0].item()) <= 1e-7 * sol.x[0]


def test_nlls_is_efficient_on_t2_decay():
    """At SNR 100 the NLLS variance reaches the CRB (within 5 %) and its bias is negligible."""
    model = crbnet.get_model("t2_decay")
    grid = make_grid(model, 4)
    # One start: the 64-atom start dictionary already lands in the right basin for T2 decay.
    result = evaluate(NLLSEstimator(model, n_starts=1), grid, snr=100, realizations=2500, seed=9)
    var_ratio = result.var_over_crb[:, 0]
    assert np.all(np.abs(var_ratio - 1) < 0.1), var_ratio           # each point (σ ≈ 2.8 %)
    assert abs(result.summary()["T2"]["var_over_crb"] - 1) < 0.05    # pooled (σ ≈ 1.4 %)
    assert np.all(np.abs(result.bias_over_sqrt_crb[:, 0]) < 0.1)     # σ of the mean ≈ 0.02
    assert np.all(np.abs(result.mse_over_crb[:, 0] - 1) < 0.1)
    assert result.n_failed.sum() == 0


def test_nlls_is_efficient_on_fisp_mrf():
    """The same check on MR fingerprinting (80-TR schedule, 2×2 grid, 2000 realizations per
    point); benchmarks/bench_nlls_efficiency.py runs the full 400-TR schedule."""
    model = short_fisp(5)
    # Brain-tissue T1/T2 (WM to lesion); CSF's T2 ≈ 2 s, also in the training range, is barely
    # encoded by 80 TRs, where NLLS is no longer efficient at SNR 100.
    grid = make_grid(model, 2, ranges={"T1": (0.1, 4.0), "T2": (0.01, 0.5)})
    result = evaluate(NLLSEstimator(model, n_starts=1), grid, snr=100, realizations=2000,
                      seed=11)
    summary = result.summary()
    for j, p in enumerate(model.parameters):
        assert abs(summary[p]["var_over_crb"] - 1) < 0.05, p          # pooled (σ ≈ 1.6 %)
        assert np.all(np.abs(result.var_over_crb[:, j] - 1) < 0.12)   # each point (σ ≈ 3.2 %)
        # Maximum likelihood is biased at order 1/SNR; here it stays far below √CRB.
        assert np.all(np.abs(result.bias_over_sqrt_crb[:, j]) < 0.2)
    assert result.n_failed.sum() == 0


def test_nlls_rejects_bad_signals():
    model = crbnet.get_model("t2_decay")
    with pytest.raises(InputError, match="complex"):
        NLLSEstimator(model).predict(np.ones((1, model.n_timepoints)))
    with pytest.raises(InputError, match="time points"):
        NLLSEstimator(model).predict(np.ones((1, 3), dtype=complex))


# ---- crbnet fit -----------------------------------------------------------------------------
def test_fit_command_round_trip(tmp_path, capsys):
    model = crbnet.get_model("t2_decay")
    truth = torch.tensor([[0.03], [0.07], [0.15]], dtype=torch.float64)
    signals = (_complex_m0(3, seed=10)[:, None] * model.simulate(truth)).numpy()
    np.save(tmp_path / "signals.npy", signals)
    for method in ("nlls", "dictionary"):
        out = tmp_path / f"{method}.npy"
        rc = main(["fit", "--method", method, "--model", "t2_decay", "--input",
                   str(tmp_path / "signals.npy"), "--out", str(out), "--m0-out",
                   str(tmp_path / f"{method}_m0.npy")])
        assert rc == 0
        printed = capsys.readouterr().out
        assert "T2" in printed
        estimates = np.load(out)
        assert estimates.dtype == np.float64 and estimates.shape == (3, 1)
        expected = estimators.get(method, model).predict(signals).numpy()
        np.testing.assert_array_equal(estimates, expected)
        if method == "nlls":
            np.testing.assert_allclose(estimates, truth.numpy(), rtol=1e-9)
        assert np.load(tmp_path / f"{method}_m0.npy").shape == (3,)


def test_fit_command_bounds_training_confines_the_search(tmp_path, capsys):
    """--bounds training: NLLS searches the training range (T2 0.01-2.5 s) instead of the
    physical bounds (0.001-10 s); a truth below the range ends on its edge."""
    model = crbnet.get_model("t2_decay")
    lo = model.spec("T2").train_range[0]
    truth = torch.tensor([[0.5 * lo], [0.05]], dtype=torch.float64)
    np.save(tmp_path / "y.npy", (_complex_m0(2, seed=4)[:, None] * model.simulate(truth)).numpy())
    found = {}
    for box in ("physical", "training"):
        out = tmp_path / f"{box}.npy"
        assert main(["fit", "--method", "nlls", "--model", "t2_decay", "--bounds", box,
                     "--input", str(tmp_path / "y.npy"), "--out", str(out)]) == 0
        found[box] = np.load(out)[:, 0]
    capsys.readouterr()
    np.testing.assert_allclose(found["physical"], truth[:, 0].numpy(), rtol=1e-8)
    assert found["training"][0] == pytest.approx(lo, rel=1e-12)
    assert found["training"][1] == pytest.approx(0.05, rel=1e-8)


def test_fit_command_bad_input_exits_2(tmp_path, capsys):
    model = crbnet.get_model("t2_decay")
    good = model.simulate(torch.tensor([[0.05]], dtype=torch.float64)).numpy()
    cases = {
        "real.npy": good.real,
        "short.npy": good[:, :5],
        "nan.npy": np.where(np.arange(good.shape[1]) == 2, np.nan, good),
        "objects.npy": np.array([{"a": 1}], dtype=object),
    }
    for name, arr in cases.items():
        np.save(tmp_path / name, arr, allow_pickle=True)
    (tmp_path / "text.npy").write_text("not an array")
    for name in list(cases) + ["text.npy", "missing.npy"]:
        out = tmp_path / f"out_{name}"
        rc = main(["fit", "--method", "dictionary", "--model", "t2_decay", "--input",
                   str(tmp_path / name), "--out", str(out)])
        err = capsys.readouterr().err
        assert rc == 2, name
        assert err.startswith("crbnet: error:") and err.count("\n") == 1, err
        assert not out.exists()
    rc = main(["fit", "--method", "nlls", "--model", "t2_decay", "--input",
               str(tmp_path / "real.npy"), "--out", str(tmp_path / "x.npy"),
               "--option", "n_starts=0"])
    assert rc == 2
    rc = main(["fit", "--method", "nlls", "--model", "nope", "--input",
               str(tmp_path / "real.npy"), "--out", str(tmp_path / "x.npy")])
    assert rc == 2
    assert not list(tmp_path.glob(".tmp-*"))
