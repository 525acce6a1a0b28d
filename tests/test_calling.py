"""One way to call an estimator (``estimators.calling.checked_predict``): conversion, failed
rows, the estimator's own fit, and the same one-line error in evaluate, compare and apply."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crbnet import models
from crbnet.assessment.compare import timed_predict
from crbnet.assessment.evaluate import evaluate
from crbnet.errors import InputError
from crbnet.estimators.calling import checked_predict
from crbnet.estimators.protocol import SignalFit
from crbnet.imaging.apply import apply_to_volume
from crbnet.imaging.nifti import ArraySignals

pytestmark = pytest.mark.usefixtures("one_thread")


class Fixed:
    """Returns whatever ``answer(signals)`` gives: the estimator under test."""

    name = "fixed"

    def __init__(self, model, answer):
        self.model, self.answer = model, answer

    @property
    def parameters(self):
        return self.model.parameters

    def predict(self, signals):
        return self.answer(signals)


@pytest.fixture(scope="module")
def t2():
    return models.get("t2_decay")


def _signals(model, n):
    theta = torch.full((n, 1), 0.08, dtype=torch.float64)
    return model.simulate(theta).to(torch.complex128)


def test_estimates_become_float64_on_the_cpu_and_failed_rows_are_marked(t2):
    values = np.array([[0.05], [np.nan], [np.inf], [0.07]], dtype=np.float32)
    called = checked_predict(Fixed(t2, lambda y: values), _signals(t2, 4))
    assert called.theta.dtype == torch.float64 and called.theta.device.type == "cpu"
    assert called.theta[0, 0].item() == pytest.approx(0.05, rel=1e-6)
    assert called.finite.tolist() == [True, False, False, True]
    assert called.seconds >= 0 and called.fit is None


def test_with_fit_takes_the_estimators_own_fit(t2):
    class OwnFit(Fixed):
        def predict(self, signals):
            raise AssertionError("predict must not be called when the fit is asked for")

        def predict_with_fit(self, signals):
            n = signals.shape[0]
            return SignalFit(theta=torch.full((n, 1), 0.06, dtype=torch.float64),
                             m0=torch.ones(n, dtype=torch.complex128),
                             rss=torch.zeros(n))

    called = checked_predict(OwnFit(t2, None), _signals(t2, 3), with_fit=True)
    assert called.fit is not None and called.fit.theta.shape == (3, 1)
    assert torch.equal(called.theta, torch.full((3, 1), 0.06, dtype=torch.float64))
    # an estimator without predict_with_fit is called through predict
    plain = checked_predict(Fixed(t2, lambda y: torch.zeros(y.shape[0], 1)), _signals(t2, 2),
                            with_fit=True)
    assert plain.fit is None


BAD_ANSWERS = {
    "wrong shape": (lambda y: torch.zeros(y.shape[0], 2), r"returned shape \[\d+, 2\], expected"),
    "one row short": (lambda y: torch.zeros(y.shape[0] - 1, 1), r"returned shape .* expected"),
    "complex": (lambda y: torch.zeros(y.shape[0], 1, dtype=torch.complex128), "real numbers"),
    "nothing": (lambda y: None, "returned NoneType, not a tensor or array"),
}


@pytest.mark.parametrize("case", sorted(BAD_ANSWERS))
def test_a_wrong_answer_is_one_error_wherever_the_estimator_runs(case, t2, tmp_path):
    answer, pattern = BAD_ANSWERS[case]
    estimator = Fixed(t2, answer)
    messages = []
    with pytest.raises(InputError, match=pattern) as info:
        evaluate(estimator, torch.tensor([[0.08]]), snr=50, realizations=2, classify=False)
    messages.append(str(info.value))
    with pytest.raises(InputError, match=pattern) as info:
        timed_predict(estimator, _signals(t2, 4))
    messages.append(str(info.value))
    signal = np.broadcast_to(_signals(t2, 1).numpy().reshape(1, 1, -1), (2, 2, t2.n_timepoints))
    with pytest.raises(InputError, match=pattern) as info:
        apply_to_volume(estimator, ArraySignals(np.ascontiguousarray(signal)), tmp_path / "o",
                        mask=np.ones((2, 2), bool), sigma=1.0)
    messages.append(str(info.value))
    assert all(m.startswith("estimator 'fixed' returned") for m in messages), messages
    assert "\n" not in "".join(messages)
    assert not (tmp_path / "o").exists()
