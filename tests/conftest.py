import os
from pathlib import Path

import pytest
import torch

# Fixed seeds and a predictable thread count keep the suite reproducible on 2 cores.
torch.set_num_threads(int(os.environ.get("CRBNET_TEST_THREADS", "2")))

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture
def oct_csv() -> Path:
    """The seed authors' optimized control points (outside fixture in ../shared/data)."""
    path = SHARED / "data" / "mt_hybrid_state_oct_control_points.csv"
    if not path.exists():
        pytest.skip("../shared/data is not available")
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
