"""What every registered model, loss, estimator and sequence kind promises, checked over the
registries (built-in models and the worked example from examples/, every loss in crbnet.learning.losses,
every estimator in crbnet.estimators.protocol — the network included —, every kind in
crbnet.physics.sequences.KINDS): small sizes, float64 where the maths is checked."""

from pathlib import Path

import numpy as np
import pytest
import torch
from test_crb import brute_force_crb  # finite differences over (θ, Re M0, Im M0)

import crbnet
from crbnet import models, sequences
from crbnet.errors import InputError
from crbnet.estimators import protocol as estimator
from crbnet.estimators.nlls import NLLSEstimator
from crbnet.learning import losses
from crbnet.testing import check_estimator, check_loss, check_model
from crbnet.learning.trainer import Trainer
from crbnet.learning.training_config import build_config

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


GRE_EXAMPLE = (f"{Path(__file__).resolve().parents[1] / 'examples' / 'gradient_echo_t2star.py'}"
               ":T2StarDecay")


@pytest.mark.parametrize("spec", [*MODEL_SPECS, GRE_EXAMPLE], ids=[*MODEL_IDS, "T2StarDecay"])
def test_shipped_contract_checker_passes(spec):
    """crbnet.testing.check_model — what plugin authors run — passes on every model crbnet
    ships and on the worked examples (Jacobian and CRB at 2 points)."""
    report = check_model(small_model(spec), n_points=2)
    assert report["Jacobian vs finite differences"] == "passed"
    assert report["CRB vs explicit Fisher inverse"] == "passed"
    assert report["device"] == ("passed" if torch.cuda.is_available() else
                                "skipped: CUDA is not available")


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
    cfg = build_config(model, overrides={
        "data": {"batches_per_epoch": 2, "batch_size": 32, "val_size": 32, "pool_size": 32,
                 "pool_refresh": 16},
        "subspace": {"n_fit": 64, "n_check": 4}, "net": {"width": 8, "depth": 1},
        "optim": {"epochs": 1}})
    torch.manual_seed(1234)
    expected_draw = torch.rand(3)
    torch.manual_seed(1234)
    summary = Trainer(model, cfg, tmp_path, log=None).fit()
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


EXAMPLE_LOSS = (f"{Path(__file__).resolve().parents[1] / 'examples' / 'relative_l1_loss.py'}"
                ":relative_l1")


@pytest.mark.parametrize("name", [*losses.names(), EXAMPLE_LOSS],
                         ids=[*losses.names(), "relative_l1"])
def test_shipped_loss_checker_passes(name):
    assert set(check_loss(name).values()) == {"passed"}


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
ESTIMATOR_MODEL = "ir_t1"


@pytest.fixture(scope="module")
def ir_t1_checkpoint(tmp_path_factory):
    """A small ir_t1 network (a few epochs: the contract is about form, not accuracy)."""
    out = tmp_path_factory.mktemp("ir_t1_net")
    cfg = build_config(ESTIMATOR_MODEL, overrides={
        "data": {"batches_per_epoch": 20, "batch_size": 64, "val_size": 64},
        "subspace": {"n_fit": 128, "n_check": 0}, "net": {"width": 16, "depth": 1},
        "optim": {"epochs": 2}})
    Trainer(models.get(ESTIMATOR_MODEL), cfg, out, log=None).fit()
    return out


def build_estimator(name: str, model: models.SignalModel, checkpoint: Path):
    options = {"checkpoint": checkpoint} if estimator.kind(name).needs_checkpoint else {}
    return estimator.get(name, model, **options)


@pytest.mark.parametrize("name", estimator.names())
def test_estimator_contract(name, ir_t1_checkpoint):
    """Every registered estimator: an Estimator of the model, [N, P] float64 in the model's
    parameter order, within the bounds, the same for any |M0| and a (small) phase of M0."""
    model = models.get(ESTIMATOR_MODEL)
    est = build_estimator(name, model, ir_t1_checkpoint)
    assert isinstance(est, estimator.Estimator) and est.name
    assert tuple(est.parameters) == tuple(model.parameters)
    truth = torch.tensor([[0.3], [1.1], [2.5]], dtype=torch.float64)
    signals = model.simulate(truth)
    theta = est.predict(signals)
    assert theta.dtype == torch.float64 and theta.shape == (3, 1)
    lo, hi = model.bounds["T1"]
    assert ((theta >= lo) & (theta <= hi)).all()
    m0 = torch.tensor([2.0 * np.exp(0.3j), 0.5, 1.5j], dtype=torch.complex128)
    torch.testing.assert_close(est.predict(m0[:, None] * signals), theta, rtol=1e-3, atol=0)
    assert set(check_estimator(est, model).values()) == {"passed"}   # the shipped checker


def test_example_estimator_passes_the_shipped_checker():
    median = estimator.get(f"{Path(__file__).resolve().parents[1] / 'examples'}"
                           "/median_estimator.py:Median", models.get(ESTIMATOR_MODEL),
                           n_atoms=200)
    assert set(check_estimator(median, models.get(ESTIMATOR_MODEL)).values()) == {"passed"}


@pytest.mark.parametrize("name", estimator.names(needs_checkpoint=False))
def test_model_only_estimators_recover_noiseless_truth(name):
    """The estimators built from the model alone (the --method choices): close to the truth on
    noiseless signals of any complex M0, and M0 with it."""
    model = models.get(ESTIMATOR_MODEL)
    truth = torch.tensor([[0.3], [1.1], [2.5]], dtype=torch.float64)
    m0 = torch.tensor([1.0, -0.5j, 2.0 + 1.0j], dtype=torch.complex128)
    theta, m0_hat = estimator.get(name, model).predict_with_m0(m0[:, None] * model.simulate(truth))
    torch.testing.assert_close(theta, truth, rtol=0.05, atol=0)     # a dictionary's grid step
    torch.testing.assert_close(m0_hat.to(torch.complex128), m0, rtol=0.05, atol=0)


def test_network_estimator_refuses_another_model(ir_t1_checkpoint):
    with pytest.raises(InputError, match="was trained for"):
        estimator.get("network", models.get("t2_decay"), checkpoint=ir_t1_checkpoint)
    with pytest.raises(InputError, match="unknown option"):
        estimator.get("network", models.get(ESTIMATOR_MODEL), path=ir_t1_checkpoint)


# ---- sequence kinds ----------------------------------------------------------------------
def default_sequence_of(kind: str) -> sequences.Sequence:
    cls = next(c for c in models.REGISTRY.values() if c.sequence_kind == kind)
    return cls.default_sequence()


@pytest.mark.parametrize("kind", list(sequences.KINDS))
def test_sequence_kind_contract(kind, tmp_path):
    """Every registered kind: a model uses it, its JSON round-trips (same hash), and a missing
    or unknown field is one clear error."""
    entry = sequences.kind_of(kind)
    seq = default_sequence_of(kind)
    assert seq.kind == kind and isinstance(seq, entry.cls) and seq.n_timepoints > 0
    data = seq.to_dict()
    assert entry.required <= set(data) <= entry.required | entry.optional
    path = tmp_path / "seq.json"
    path.write_text(sequences.to_json(seq))
    for again in (sequences.from_dict(data, kind), sequences.load(path, kind)):
        assert sequences.sequence_hash(again) == sequences.sequence_hash(seq)
    missing = sorted(entry.required)[0]
    with pytest.raises(sequences.SequenceError, match=f"missing field.*{missing}"):
        sequences.from_dict({k: v for k, v in data.items() if k != missing}, kind)
    with pytest.raises(sequences.SequenceError, match="unknown field.*colour"):
        sequences.from_dict({**data, "colour": 1}, kind)


def test_a_sequence_kind_of_ones_own_registers_and_loads(tmp_path):
    """A new kind is a dataclass and a decorator: from_dict and load read it, the hardware
    checks read its pulses, a model that takes it accepts it, and CSV files are refused for it
    with one line."""
    from dataclasses import dataclass, field

    @sequences.register_sequence_kind
    @dataclass(frozen=True, eq=False)
    class GradientEchoTimes:
        TE: list
        TR: float = 0.05
        kind: str = field(default="gre_test", init=False)

        @property
        def n_timepoints(self) -> int:
            return len(self.TE)

        def to_dict(self) -> dict:
            return {"TE": list(self.TE), "TR": self.TR}

        def rf_pulses(self):
            n = len(self.TE)
            return np.full(n, 0.2), np.full(n, 1e-3), self.TR * n

    try:
        assert sequences.kind_of("gre_test").required == {"TE"}
        seq = sequences.from_dict({"TE": [0.01, 0.02, 0.04]}, "gre_test")
        assert isinstance(seq, GradientEchoTimes) and seq.TR == 0.05
        from crbnet.physics import hardware
        summary = hardware.rf_summary(seq)                       # its pulses reach the checks
        assert summary["n_pulses"] == 3 and summary["peak_b1"] == pytest.approx(
            0.2 / 1e-3 / hardware.GAMMA)

        class T2Star(models.SignalModel):
            name = "t2star_test"
            sequence_kind = "gre_test"
            specs = (models.ParameterSpec("T2s", "s", (1e-3, 1.0), (0.01, 0.1), 0.04, True),)

            @classmethod
            def default_sequence(cls):
                return seq

            def _simulate(self, p):
                te = torch.tensor(self.sequence.TE, dtype=p["T2s"].dtype)
                return torch.exp(-te / p["T2s"][:, None]).to(torch.complex128)

        (tmp_path / "te.json").write_text('{"TE": [0.005, 0.01], "TR": 0.1}')
        model = T2Star(sequence=sequences.load(tmp_path / "te.json", "gre_test"))
        assert model.n_timepoints == 2 and model.sequence.TR == 0.1
        (tmp_path / "te.csv").write_text("theta_rad,trf_ms\n")
        with pytest.raises(sequences.SequenceError, match="CSV sequence files"):
            sequences.load(tmp_path / "te.csv", "gre_test")
        with pytest.raises(sequences.SequenceError, match="unknown sequence kind"):
            sequences.from_dict({}, "no_such_kind")
    finally:
        del sequences.KINDS["gre_test"]
