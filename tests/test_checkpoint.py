"""Checkpoints: everything needed to use a network, safe loading, the estimator API."""

import pickle

import numpy as np
import pytest
import torch

import crbnet
from crbnet.errors import InputError
from crbnet.estimators.protocol import Estimator, as_signal_tensor
from crbnet.learning import checkpoint
from crbnet.learning.nets import invariant_features
from crbnet.learning.trainer import Trainer
from crbnet.learning.training_config import build_config

TINY = {"data": {"batches_per_epoch": 5, "batch_size": 64, "val_size": 64},
        "subspace": {"n_fit": 256, "n_check": 8},
        "net": {"width": 16, "depth": 1}, "optim": {"epochs": 1}}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    model = crbnet.get_model("ir_t1")
    Trainer(model, build_config("ir_t1", overrides=TINY), out, log=None).fit()
    return out


def test_checkpoint_content_and_weights_only_load(run_dir):
    record = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert record["format"] == "crbnet-checkpoint" and record["version"] == 1
    p = record["payload"]
    assert p["model"]["name"] == "ir_t1" and p["model"]["parameters"] == ["T1"]
    assert p["model"]["sequence"]["times"] == crbnet.get_model("ir_t1").sequence.times.tolist()
    assert p["model"]["units"] == {"T1": "s"} and p["model"]["bounds"]["T1"] == [1e-3, 10.0]
    assert p["basis"].shape[0] == 12 and p["basis"].shape[-1] == 2
    assert p["normalization"]["method"].startswith("subspace-phase-magnitude")
    assert "feature_mean" in p["network"]["state_dict"]
    assert p["training"]["config"]["loss"]["name"] == "crb"
    assert len(p["training"]["metrics"]) == 1
    assert set(p["resume"]) >= {"epoch", "optimizer", "scheduler", "rng"}
    assert record["checksum"] == checkpoint.checksum(p)


def test_estimator_api(run_dir):
    est = crbnet.load(run_dir / "checkpoint.pt", device="cpu")
    assert isinstance(est, Estimator)
    assert est.parameters == ("T1",) and est.name == "net-crb" and est.model.name == "ir_t1"
    same = crbnet.load(run_dir)  # a run directory works too
    theta = torch.tensor([[0.3], [1.0], [2.5]], dtype=torch.float64)
    y = est.model.simulate(theta) * (0.8 - 0.6j)
    out = est.predict(y)
    assert out.shape == (3, 1) and out.dtype == torch.float64
    assert torch.equal(out, same.predict(y.numpy()))  # numpy input, same answer
    lo, hi = est.info["sampling"]["T1"]["range"]
    assert torch.all(out > 0) and torch.all(out < 10)
    with pytest.raises(InputError):
        est.predict(y.real)                    # real-valued
    with pytest.raises(InputError):
        est.predict(y[:, :5])                  # wrong length
    bad = y.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(InputError):
        est.predict(bad)


@pytest.mark.parametrize("c", [2.0, -1.0, 1j, 0.01 * (3 - 4j), 250 * np.exp(2.2j)])
def test_prediction_invariant_to_complex_m0(run_dir, c):
    est = crbnet.load(run_dir)
    g = torch.Generator().manual_seed(0)
    theta = torch.rand(200, 1, generator=g, dtype=torch.float64) * 3.5 + 0.2
    y = est.model.simulate(theta)
    y = y + 0.02 * torch.view_as_complex(torch.randn(*y.shape, 2, generator=g,
                                                     dtype=torch.float64))
    a, b = est.predict(y), est.predict(complex(c) * y)
    assert torch.allclose(a, b, rtol=1e-4, atol=0)


def test_invariant_features_exact():
    g = torch.Generator().manual_seed(1)
    z = torch.view_as_complex(torch.randn(50, 7, 2, generator=g, dtype=torch.float64))
    for c in (3.0, -0.5, 2j, 1e-3 * (1 + 1j)):
        assert torch.allclose(invariant_features(z), invariant_features(c * z), atol=1e-12)
    f = invariant_features(z)
    assert torch.allclose(f.pow(2).sum(1), torch.ones(50, dtype=torch.float64))  # unit norm
    assert torch.all(f[:, 0] >= 0)                                               # sign rule


def _resave(path, record):
    torch.save(record, path)


def test_foreign_and_tampered_files_refused(run_dir, tmp_path):
    good = torch.load(run_dir / "checkpoint.pt", weights_only=True)

    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(3)}}, foreign)
    with pytest.raises(InputError, match="format tag"):
        crbnet.load(foreign)

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(InputError, match="not a crbnet checkpoint"):
        crbnet.load(garbage)

    class Evil:
        def __reduce__(self):
            return (print, ("code ran on load",))

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"format": "crbnet-checkpoint", "x": Evil()}, protocol=2))
    with pytest.raises(InputError):
        crbnet.load(evil)

    tampered = tmp_path / "tampered.pt"
    rec = {**good, "payload": dict(good["payload"])}
    net = dict(rec["payload"]["network"])
    sd = {k: v.clone() for k, v in net["state_dict"].items()}
    name = next(k for k in sd if k.endswith("weight"))
    sd[name][0, 0] += 1e-3
    rec["payload"]["network"] = {**net, "state_dict": sd}
    _resave(tampered, rec)
    with pytest.raises(InputError, match="checksum"):
        crbnet.load(tampered)

    wrong_keys = tmp_path / "keys.pt"
    rec = {**good, "payload": {k: v for k, v in good["payload"].items() if k != "basis"}}
    _resave(wrong_keys, rec)
    with pytest.raises(InputError, match="keys"):
        crbnet.load(wrong_keys)

    wrong_version = tmp_path / "version.pt"
    _resave(wrong_version, {**good, "version": 99})
    with pytest.raises(InputError, match="version"):
        crbnet.load(wrong_version)

    with pytest.raises(InputError, match="not found"):
        crbnet.load(tmp_path / "missing.pt")


@pytest.mark.parametrize("bad", [complex(float("nan"), 0.0), complex(0.0, float("inf")),
                                 complex(float("-inf"), 1.0)])
def test_signal_check_finds_any_nan_or_inf(bad):
    signals = torch.randn(5, 7, dtype=torch.complex64)
    signals[3, 4] = bad
    with pytest.raises(InputError, match="NaN or Inf"):
        as_signal_tensor(signals, 7)


def test_signal_check_accepts_huge_finite_values_whose_sum_overflows():
    """The fast check sums the array; a finite sum proves finiteness, an overflowing one must
    fall back to the element-wise check instead of rejecting valid data."""
    signals = torch.full((4, 6), complex(3e38, -3e38), dtype=torch.complex64)
    assert not torch.isfinite(signals.sum())
    assert as_signal_tensor(signals, 6, dtype=None).dtype == torch.complex64
