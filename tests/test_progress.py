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
