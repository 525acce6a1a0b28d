"""crbnet.testing catches broken plugins: each check fails on a model, loss or estimator that
breaks one contract, with an AssertionError naming that contract."""

import numpy as np
import pytest
import torch

from crbnet import models, sequences
from crbnet.learning.losses import Loss
from crbnet.models import ParameterSpec, SignalModel
from crbnet.testing import ContractError, check_estimator, check_loss, check_model


class Decay(SignalModel):
    """exp(−t/T2) at 8 times: a correct model that the broken ones below change."""

    name = "decay_test"
    sequence_kind = "times"
    specs = (ParameterSpec("T2", "s", (1e-3, 1.0), (0.02, 0.2), 0.08, True),)

    @classmethod
    def default_sequence(cls):
        return sequences.from_times(0.01 * np.arange(1, 9))

    def _simulate(self, p):
        t = torch.as_tensor(self.sequence.times, dtype=p["T2"].dtype)
        decay = torch.exp(-t / p["T2"][:, None])
        return torch.complex(decay, torch.zeros_like(decay))


class WrongJacobian(Decay):
    def explicit_signal_and_jacobian(self, theta):
        f = self.simulate(theta)
        t = torch.as_tensor(self.sequence.times, dtype=theta.dtype)
        return f, (1.1 * f * t / theta[:, :1] ** 2)[None]       # 10 % too large


class LeakyBatch(Decay):
    def _simulate(self, p):
        f = super()._simulate(p)
        return f / f.abs().mean()                                # depends on the other voxels


class AlwaysDouble(Decay):
    def _simulate(self, p):
        return super()._simulate({k: v.double() for k, v in p.items()})


class DefaultOutside(Decay):
    specs = (ParameterSpec("T2", "s", (1e-3, 1.0), (0.02, 0.2), 2.0, True),)


@pytest.mark.parametrize("model, contract", [
    (WrongJacobian(), "Jacobian vs finite differences"),
    (LeakyBatch(), "batch"),
    (AlwaysDouble(), "dtype"),
    (DefaultOutside(), "parameter specs"),
])
def test_check_model_names_the_broken_contract(model, contract):
    with pytest.raises(AssertionError, match=f"contract '{contract}' broken"):
        check_model(model)


def test_check_model_passes_the_correct_model_and_reports_skips():
    report = check_model(Decay())
    assert report["batch"] == "passed" and report["signal_for_sequence"].startswith("skipped")


def _loss(compute) -> Loss:
    return Loss("broken_test", compute, "a broken loss")


@pytest.mark.parametrize("loss, contract", [
    (_loss(lambda x: ((x.estimate - x.target) ** 2).mean(0)), "shape"),         # a vector
    (_loss(lambda x: (x.estimate ** 2).mean()), "zero at the truth"),
    (_loss(lambda x: ((x.estimate - x.target) ** 2).mean().detach() * 0
           + (x.target ** 0).mean() - 1), "gradient"),
    (_loss(lambda x: ((x.estimate - x.target) ** 2 / 0.0).mean()), "finite"),
])
def test_check_loss_names_the_broken_contract(loss, contract):
    with pytest.raises(ContractError, match=f"contract '{contract}' broken"):
        check_loss(loss)


class Midpoint:
    """Returns the middle of each training range; its variants break one contract each."""

    def __init__(self, model, dtype=torch.float64, check_length=True):
        self.model, self.name, self.dtype = model, "midpoint", dtype
        self.parameters, self.check_length = tuple(model.parameters), check_length

    def predict(self, signals):
        signals = torch.as_tensor(signals)
        if self.check_length and signals.shape[1] != self.model.n_timepoints:
            from crbnet.errors import InputError
            raise InputError("wrong number of time points")
        mid = [(lo + hi) / 2 for lo, hi in self.model.train_ranges.values()]
        return torch.tensor(mid, dtype=self.dtype).repeat(signals.shape[0], 1)


def test_check_estimator_passes_a_correct_one_and_names_broken_contracts():
    model = models.get("t2_decay")
    assert set(check_estimator(Midpoint(model), model).values()) == {"passed"}
    with pytest.raises(ContractError, match="contract 'predict' broken.*float64"):
        check_estimator(Midpoint(model, dtype=torch.float32), model)
    with pytest.raises(ContractError, match="contract 'signal length' broken.*accepted"):
        check_estimator(Midpoint(model, check_length=False), model)
    with pytest.raises(ContractError, match="contract 'interface' broken"):
        check_estimator(Midpoint(models.get("ir_t1")), model)
