"""Library calls leave the caller's global state alone: matplotlib backend and pyplot figures,
numba's thread count (the global torch RNG: test_contracts.py); notes go through logging, the
CLI shows them."""

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from crbnet.cli import app as cli
from crbnet.imaging.nifti import NiftiSignals

ROOT = Path(__file__).resolve().parents[1]


def test_figures_leave_the_matplotlib_backend_and_pyplot_alone(tmp_path):
    script = f"""
import matplotlib
matplotlib.use("svg")
import matplotlib.pyplot as plt
from crbnet.plots.training import plot_training_curves
rows = [{{"epoch": e, "train_loss": 1.0 / e, "val_crb_loss_mean": 2.0 / e, "val_crb_loss_T2": 2.0 / e}}
        for e in (1, 2, 3)]
plot_training_curves(rows, ["T2"], {str(tmp_path / "loss.png")!r}, loss_name="crb")
assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
assert plt.get_fignums() == [], plt.get_fignums()
"""
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mt_kernel_restores_numba_threads():
    import numba

    from crbnet import models
    from crbnet.physics.models import _mt_kernel
    if not _mt_kernel.available():
        return
    numba.set_num_threads(1)
    model = models.get("mt_hybrid_state")
    before_torch = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        model.simulate(model.theta_from_dict({}, fill_defaults=True))
        assert numba.get_num_threads() == 1
    finally:
        torch.set_num_threads(before_torch)


def test_compiled_kernel_keeps_torch_threads():
    """Starting numba's OpenMP layer (first kernel call, fresh process) must not change
    PyTorch's thread count."""
    script = """
import torch
torch.set_num_threads(1)
from crbnet import models
model = models.get("fisp_mrf")
for _ in range(2):
    model.simulate(torch.tensor([[1.0, 0.1]], dtype=torch.float64))
    assert torch.get_num_threads() == 1, torch.get_num_threads()
"""
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr


def save_gz(path: Path, data: np.ndarray) -> Path:
    import nibabel as nib
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    return path


def test_library_notes_go_through_logging_and_the_cli_prints_them(tmp_path, caplog, capsys,
                                                                  monkeypatch):
    # as in a program that never ran the CLI: no handler on crbnet's loggers
    monkeypatch.setattr(logging.getLogger("crbnet"), "handlers", [])
    data = (np.arange(4 * 3 * 2 * 5) * (1 + 1j)).reshape(4, 3, 2, 5).astype(np.complex64)
    src = NiftiSignals(save_gz(tmp_path / "s.nii.gz", data), max_bytes=100)
    with caplog.at_level(logging.INFO, logger="crbnet"):
        src.read(next(iter(src.blocks())))
    assert capsys.readouterr().err == ""                  # the library itself prints nothing
    assert any("gzip-compressed" in r.getMessage() for r in caplog.records)
    monkeypatch.undo()
    assert cli.main(["models", "--json"]) == 0            # the CLI sets up its log output
    capsys.readouterr()
    logging.getLogger("crbnet.imaging.nifti").info("a note for the user")
    assert capsys.readouterr().err == "crbnet: note: a note for the user\n"


def test_training_uses_the_workqueue_layer_unless_the_user_chose_one():
    # numba's OpenMP layer leaves spinning threads that slow the PyTorch steps after a kernel;
    # the trainer asks for workqueue, everything else keeps numba's default
    # (crbnet.physics.models._numba); workqueue refuses concurrent launches, which the lock
    # serializes.
    script = """
import sys, tempfile, threading, numba, torch
from crbnet import models
from crbnet.cli import app
if sys.argv[1] == "train":
    out = tempfile.mkdtemp() + "/run"
    assert app.main(["train", "--model", "t2_decay", "--out", out, "--epochs", "1", "--no-progress",
                     "--set", "data.batches_per_epoch=2", "--set", "data.batch_size=32",
                     "--set", "data.val_size=32", "--set", "subspace.n_fit=64",
                     "--set", "subspace.n_check=0", "--set", "net.width=8",
                     "--set", "net.depth=1"]) == 0
model = models.get("fisp_mrf")
theta = torch.tensor([[0.8, 0.05], [1.5, 0.2], [4.0, 2.0]] * 20, dtype=torch.float64)
serial = model.simulate(theta)
results = [None] * 4
def work(i):
    results[i] = model.simulate(theta)
threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
for t in threads: t.start()
for t in threads: t.join()
assert all(torch.equal(r, serial) for r in results)
print(numba.threading_layer())
"""
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"}

    def layer(mode: str, chosen: str | None = None) -> str | None:
        run_env = dict(env) if chosen is None else dict(env, NUMBA_THREADING_LAYER=chosen)
        done = subprocess.run([sys.executable, "-c", script, mode], capture_output=True,
                              text=True, env=run_env, timeout=300)
        if chosen is not None and "threading layer" in done.stderr.lower():
            return None                 # this machine's numba has no such layer to choose
        assert done.returncode == 0, done.stderr
        return done.stdout.split()[-1]

    assert layer("train") == "workqueue"
    omp = layer("train", chosen="omp")
    assert omp in (None, "omp")
    if omp == "omp":
        # without training, numba keeps its own default (OpenMP where it has it)
        assert layer("no-train") == "omp"
