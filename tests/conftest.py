import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

# Fixed seeds and a predictable thread count keep the suite reproducible on 2 cores.
torch.set_num_threads(int(os.environ.get("CRBNET_TEST_THREADS", "2")))

# A hybrid-state control-point file in the CSV format crbnet reads: '#' comments, a header,
# then θ (rad, half the flip angle) and TRF (ms) per control point. Six points so that the
# 666 TRs of a 3 s cycle at TR = 4.5 ms put one point every 111 TRs exactly.
OCT_CSV_POINTS = ((0.20, 1.00), (0.55, 0.40), (1.20, 0.10), (0.00, 1.00), (1.5707963268, 0.25),
                  (0.35, 0.70))


@pytest.fixture
def oct_csv(tmp_path) -> Path:
    """A small control-point CSV written by the test itself (same format as optimized files)."""
    path = tmp_path / "control_points.csv"
    lines = ["# hybrid-state control points, one cycle of 3 s, TR = 4.5 ms",
             "# columns: theta (rad), RF pulse duration (ms)", "theta_rad,trf_ms"]
    lines += [f"{theta!r},{trf!r}" for theta, trf in OCT_CSV_POINTS]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def one_thread():
    """One torch thread for modules of many small tensor operations (Levenberg–Marquardt
    iterations, EPG steps, tiny phantoms): a second thread gains little there and, on a busy
    2-core machine, OpenMP hand-offs can cost ten times the work. Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def architecture():
    """tools/architecture.py (the import reader and layer table), loaded as a module."""
    spec = importlib.util.spec_from_file_location("architecture", Path(__file__).resolve().parent.parent / "tools" / "architecture.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["architecture"] = module          # dataclasses look their module up by name
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("architecture", None)


class RecordingProgress:
    """A progress factory (:mod:`crbnet.progress`) that remembers every bar it opened: its
    total, desc and unit, the units done, and whether it was closed."""

    def __init__(self) -> None:
        self.bars: list[dict] = []

    def __call__(self, *, total, desc, unit):
        bar = {"total": total, "desc": desc, "unit": unit, "done": 0, "closed": False}
        self.bars.append(bar)

        class Bar:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                bar["closed"] = True

            def update(self, n=1):
                bar["done"] += n

            def set_postfix(self, *args, **kwargs):
                return None

        return Bar()

    def by_desc(self, desc):
        return [b for b in self.bars if b["desc"] == desc]


@pytest.fixture
def progress_recorder() -> RecordingProgress:
    """A fresh :class:`RecordingProgress`."""
    return RecordingProgress()
