"""What every registered model and every registered loss promises, checked over the registries
(built-in models, the worked example from examples/, every loss in crbnet.losses): small sizes,
float64 where the maths is checked."""

from pathlib import Path

import numpy as np
import pytest
import torch

import crbnet
from crbnet import baselines, losses, models, sequences
from crbnet.baselines.nlls import NLLSEstimator
from crbnet.train import Trainer, build_config
from test_crb import brute_force_crb  # finite differences over (θ, Re M0, Im M0)

EXAMPLE = (f"{Path(__file__).resolve().parents[1] / 'examples' / 'two_compartment_t2.py'}"
           ":TwoCompartmentT2")
MODEL_SPECS = [*models.REGISTRY, EXAMPLE]
MODEL_IDS = [spec.rpartition(":")[2] or spec for spec in MODEL_SPECS]

pytestmark = pytest.mark.usefixtures("one_thread")


def small_model(spec: str) -> models.SignalModel:
    """The model with a short sequence where its default is long and slow to differentiate."""
    cls = models.resolve(spec)
    seq = sequences.default_fisp_sequence(20) if cls.sequence_kind == "fisp" else None
    return models.get(spec, sequence=seq)


def inner_point(model: models.SignalModel, where: float) -> torch.Tensor:
    """[1, P]: a fraction ``where`` of the way across each training range (not the defaults,
    which some estimators start from)."""
    row = [lo + where * (hi - lo) for lo, hi in model.train_ranges.values()]
    return torch.tensor([row], dtype=torch.float64)


@pytest.mark.parametrize("spec", MODEL_SPECS, ids=MODEL_IDS)
def test_simulate_shape_and_dtype(spec):
    model = small_model(spec)
    theta = torch.cat([inner_point(model, 0.3), inner_point(model, 0.6)])
    for real, cplx in ((torch.float64, torch.complex128), (torch.float32, torch.complex64)):
        signal = model.simulate(theta.to(real))
        assert signal.dtype == cplx and signal.shape == (2, model.n_timepoints)
        assert torch.isfinite(torch.view_as_real(signal)).all()


@pytest.mark.parametrize("spec", MODEL_SPECS, ids=MODEL_IDS)
def test_crb_matches_finite_differences(spec):
    model = small_model(spec)
    theta = inner_point(model, 0.4)
    got = crbnet.crb(model, theta)[0].numpy()
    np.testing.assert_allclose(got, brute_force_crb(model, theta, 1.0, 1.0 + 0j), rtol=2e-4)


@pytest.mark.parametrize("spec", MODEL_SPECS, ids=MODEL_IDS)
def test_nlls_recovers_noiseless_truth(spec):
    model = small_model(spec)
    truth = inner_point(model, 0.35)
    m0 = torch.tensor([0.8 - 0.6j], dtype=torch.complex128)
    fit = NLLSEstimator(model).fit(m0[:, None] * model.simulate(truth))
    torch.testing.assert_close(fit.theta, truth, rtol=1e-5, atol=0)
    torch.testing.assert_close(fit.m0, m0, rtol=1e-5, atol=0)


@pytest.mark.parametrize("spec", MODEL_SPECS, ids=MODEL_IDS)
def test_one_training_epoch(spec, tmp_path):
    model = small_model(spec)
    cfg = build_config(model.name, overrides={
        "data": {"batches_per_epoch": 2, "batch_size": 32, "val_size": 32, "pool_size": 32,
                 "pool_refresh": 16},
        "subspace": {"n_fit": 64, "n_check": 4}, "net": {"width": 8, "depth": 1},
        "optim": {"epochs": 1}})
    torch.manual_seed(1234)
    expected_draw = torch.rand(3)
    torch.manual_seed(1234)
    summary = Trainer(model, cfg, tmp_path, progress=False, log=None).fit()
    torch.testing.assert_close(torch.rand(3), expected_draw)        # caller's RNG untouched
    assert summary["epochs"] == 1
    assert set(summary["val_crb_loss"]) == set(model.parameters)
    assert all(np.isfinite(v) and v > 0 for v in summary["val_crb_loss"].values())
    net = crbnet.load(tmp_path)
    assert net.predict(model.simulate(inner_point(model, 0.5))).shape == (1, model.n_parameters)


# ---- losses --------------------------------------------------------------------------------
def loss_batch(noise: float, K: int = 4) -> losses.LossInputs:
    gen = torch.Generator().manual_seed(3)
    truth = (0.5 + torch.rand(6, 2, generator=gen, dtype=torch.float64)).repeat_interleave(K, 0)
    estimate = truth * (1 + noise * torch.randn(truth.shape, generator=gen, dtype=torch.float64))
    return losses.LossInputs(estimate, truth, 0.01 * torch.ones_like(truth), [1.0, 4.0], K=K)


@pytest.mark.parametrize("name", losses.names())
def test_loss_contract(name):
    loss = losses.get(name)
    assert loss.name == name and loss.description
    exact = loss_batch(0.0)
    assert float(loss.compute(exact)) == 0.0                         # perfect estimates cost 0
    small, large = loss_batch(0.05), loss_batch(0.2)
    small_value, large_value = float(loss.compute(small)), float(loss.compute(large))
    assert 0 < small_value < large_value                             # larger errors cost more
    estimate = large.estimate.clone().requires_grad_()
    value = loss.compute(losses.LossInputs(estimate, large.target, large.crb, large.weights,
                                           K=large.K))
    value.backward()                                                 # trainable: a gradient
    assert value.ndim == 0 and torch.isfinite(estimate.grad).all() and estimate.grad.abs().sum() > 0


# ---- estimators ----------------------------------------------------------------------------
@pytest.mark.parametrize("method", list(baselines.METHODS))
def test_estimator_contract(method):
    """Every classical estimator: [N, P] float64 in the model's parameter order, within the
    bounds, close to the truth on noiseless signals of any complex M0, and M0 with it."""
    model = models.get("ir_t1")
    truth = torch.tensor([[0.3], [1.1], [2.5]], dtype=torch.float64)
    m0 = torch.tensor([1.0, -0.5j, 2.0 + 1.0j], dtype=torch.complex128)
    estimator = baselines.get(method, model)
    theta, m0_hat = estimator.predict_with_m0(m0[:, None] * model.simulate(truth))
    assert theta.dtype == torch.float64 and theta.shape == (3, 1)
    lo, hi = model.bounds["T1"]
    assert ((theta >= lo) & (theta <= hi)).all()
    torch.testing.assert_close(theta, truth, rtol=0.05, atol=0)     # a dictionary's grid step
    torch.testing.assert_close(m0_hat.to(torch.complex128), m0, rtol=0.05, atol=0)
