"""The progress contract: silent by default, any tqdm-like factory accepted."""

import io

from crbnet import progress
from crbnet.cli import _progress


def test_silent_is_the_default_and_counts_nothing():
    factory = progress.resolve(None)
    with factory(total=3, desc="x", unit="voxel") as bar:
        assert bar.update(2) is None


def test_terminal_bars_follow_redirected_stderr(monkeypatch):
    buffer = io.StringIO()
    monkeypatch.setattr("sys.stderr", buffer)
    with _progress.terminal_bars(total=2, desc="stage", unit="voxel") as bar:
        bar.update(2)
    # not a terminal: tqdm's disable=None draws nothing there
    assert buffer.getvalue() == ""


def test_a_callers_factory_sees_every_update():
    seen = []

    class Recorder:
        def __init__(self, total, desc, unit):
            seen.append((desc, total))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

        def update(self, n=1):
            seen.append(n)

    factory = progress.resolve(lambda *, total, desc, unit: Recorder(total, desc, unit))
    with factory(total=5, desc="fit", unit="voxel") as bar:
        bar.update(3)
        bar.update(2)
    assert seen == [("fit", 5), 3, 2]


def test_the_older_boolean_switch_still_works():
    from tqdm.auto import tqdm

    assert progress.resolve(False) is progress.silent
    assert progress.resolve(True) is tqdm


def test_evaluate_accepts_the_boolean_switch_and_closes_its_bar_on_failure():
    import pytest
    import torch

    from crbnet import models
    from crbnet.assessment.evaluate import evaluate, make_grid
    from crbnet.errors import InputError

    model = models.get("t2_decay")
    opened, closed = [], []

    class Bar:
        def __enter__(self):
            opened.append(1)
            return self

        def __exit__(self, *exc):
            closed.append(1)

        def update(self, n=1):
            return None

    class Wrong:
        name = "wrong"

        def __init__(self, model):
            self.model = model
            self.parameters = model.parameters

            self.calls = 0

        def predict(self, signals):            # right for the warm-up, then one column too many
            self.calls += 1
            extra = int(self.calls > 1)
            return torch.zeros(signals.shape[0], model.n_parameters + extra, dtype=torch.float64)

    grid = make_grid(model, 2)
    with pytest.raises(InputError):
        evaluate(Wrong(model), grid, snr=50, realizations=2,
                 progress=lambda **kw: Bar())
    assert opened == closed == [1]
    for switch in (False, None):
        from crbnet.estimators import get

        result = evaluate(get("nlls", model), grid, snr=50, realizations=2, progress=switch)
        assert result.mse.shape[-1] == model.n_parameters
