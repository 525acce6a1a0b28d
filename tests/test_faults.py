"""Never destroy, never hang, never race: the fast subset of the fault matrix's hostile categories.

Special outputs (FIFOs, sockets and device nodes made in tmp_path — never the machine's /dev,
which is only looked at), outputs under /proc, huge sizes refused at once without allocating,
a full disk while writing HDF5, one writer per output (and no stale lock after kill -9), and
one line always (argparse, warnings, seeds, empty lists, corrupt inputs, config layers).
"""

import errno
import gc
import os
import resource
import socket
import stat
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest

from crbnet import locks, special_outputs
from crbnet.cli import app as cli
from crbnet.errors import InputError
from crbnet.imaging.nifti import load_image
from crbnet.learning.hdf5_dataset import Dataset, write_dataset
from crbnet.physics import models
from crbnet.stats.sampling import ParameterSampler

pytestmark = pytest.mark.usefixtures("one_thread")

T2 = ["--model", "t2_decay"]
SIM = ["simulate", *T2, "--out"]


def run(capsys, argv):
    try:
        rc = cli.main(argv)
    except SystemExit as exc:
        rc = exc.code
    captured = capsys.readouterr()
    return rc, [ln for ln in captured.err.splitlines() if ln.strip()]


def one_error_line(lines):
    assert len(lines) == 1, lines
    assert lines[0].startswith("crbnet: error: "), lines
    return lines[0]


def node(path):
    st = os.lstat(path)
    return stat.S_IFMT(st.st_mode), st.st_rdev, st.st_ino


def mknod_or_skip(path, major, minor):
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
    except (OSError, AttributeError):
        pytest.skip("cannot make device nodes here (not root)")


# ---- special outputs


def test_dev_null_is_seen_as_a_stream_without_writing_it():
    before = node("/dev/null")
    assert stat.S_ISCHR(before[0])
    assert isinstance(special_outputs.stream_for("/dev/null"), special_outputs.Stream)
    assert node("/dev/null") == before


def test_fifo_without_reader_is_refused_and_kept(tmp_path, capsys):
    fifo = tmp_path / "pipe.npy"
    os.mkfifo(fifo)
    before = node(fifo)
    t0 = time.perf_counter()
    rc, lines = run(capsys, SIM + [str(fifo)])
    assert time.perf_counter() - t0 < 60      # no hang waiting for a reader
    assert rc == 1 and "no reader" in one_error_line(lines)
    assert node(fifo) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe.npy"]


def test_fifo_with_reader_receives_the_whole_file(tmp_path, capsys):
    fifo = tmp_path / "pipe.npy"
    os.mkfifo(fifo)
    before = node(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    rc, lines = run(capsys, SIM + [str(fifo)])
    reader.join(30)
    assert rc == 0, lines
    array = np.load(__import__("io").BytesIO(received[0]))
    assert array.dtype == np.complex128 and array.shape[0] == 1
    assert node(fifo) == before


def test_socket_and_device_nodes(tmp_path, capsys):
    sock_path = tmp_path / "sock.npy"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    sock.close()
    before = node(sock_path)
    rc, lines = run(capsys, SIM + [str(sock_path)])
    assert rc == 1 and "socket" in one_error_line(lines)
    assert node(sock_path) == before
    null, full = tmp_path / "null.npy", tmp_path / "full.npy"
    mknod_or_skip(null, 1, 3)
    mknod_or_skip(full, 1, 7)
    states = node(null), node(full)
    rc, lines = run(capsys, SIM + [str(null)])
    assert rc == 0, lines
    rc, lines = run(capsys, SIM + [str(full)])
    assert rc == 1 and "disk full" in one_error_line(lines)
    assert (node(null), node(full)) == states


def test_own_descriptor_is_written_at_its_position(tmp_path, capsys):
    sink = tmp_path / "sink"
    sink.write_bytes(b"head")
    fd = os.open(sink, os.O_WRONLY | os.O_APPEND)
    try:
        rc, lines = run(capsys, SIM + [f"/dev/fd/{fd}"])
    finally:
        os.close(fd)
    assert rc == 0, lines
    data = sink.read_bytes()
    assert data.startswith(b"head\x93NUMPY")     # appended, not replaced


def test_special_file_where_a_folder_goes_is_refused(tmp_path, capsys):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    rc, lines = run(capsys, ["phantom", *T2, "--shape", "4x4", "--snr", "50", "--out",
                             str(fifo)])
    assert rc == 1 and "folder" in one_error_line(lines)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


@pytest.mark.parametrize("argv", [SIM + ["/proc/crbnet-test/x.npy"],
                                  ["train", *T2, "--epochs", "1", "--out", "/proc/crbnet-run"]])
def test_output_under_proc_cannot_be_written(capsys, argv):
    rc, lines = run(capsys, argv)
    assert rc == 1 and "kernel file system" in one_error_line(lines)


# ---- huge sizes


@pytest.mark.parametrize("argv", [
    ["dataset", *T2, "--n", str(10 ** 15), "--out", "OUT/d.h5"],
    ["train", *T2, "--batch-size", str(10 ** 9), "--out", "OUT/run"],
    ["train", *T2, "--set", "net.width=100000000", "--out", "OUT/run"],
    ["evaluate", "--method", "nlls", *T2, "--grid", "100000", "--realizations", "100000",
     "--out", "OUT/ev"],
    ["compare", "nlls", *T2, "--voxels", str(10 ** 12), "--out", "OUT/cmp"],
    ["phantom", *T2, "--shape", "100000x100000", "--snr", "50", "--out", "OUT/ph"],
    ["basis", *T2, "--k", "3", "--n", str(10 ** 11), "--out", "OUT/b.npy"],
    ["fit", "--method", "dictionary", *T2, "--option", "n_points=10000000000000", "--input",
     "SIG", "--out", "OUT/e.npy"],
], ids=["dataset-n", "train-batch", "train-width", "evaluate-grid", "compare-voxels",
        "phantom-shape", "basis-n", "dictionary-atoms"])
def test_impossible_sizes_are_refused_at_once(tmp_path, capsys, argv):
    signal = tmp_path / "sig.npy"
    np.save(signal, np.ones((1, 32), dtype=np.complex128))
    argv = [a.replace("OUT", str(tmp_path / "out")).replace("SIG", str(signal)) for a in argv]
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    rc, lines = run(capsys, argv)
    elapsed = time.perf_counter() - t0
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    assert rc == 2, lines
    line = one_error_line(lines)
    assert "would need" in line or "estimates" in line
    assert elapsed <= 60.0               # no hang; 'at once' is shown by the memory
    assert grown_kb < 500_000            # nothing large was allocated
    assert not (tmp_path / "out").exists()


# ---- full disk while writing HDF5


@pytest.fixture
def small_tmpfs(tmp_path):
    path = tmp_path / "disk"
    path.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs",
                                            str(path)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a 1 MB tmpfs (needs root)")
    yield path
    subprocess.run(["umount", str(path)], capture_output=True)


def test_hdf5_write_on_a_full_disk_fails_cleanly(small_tmpfs, capsys):
    model = models.get("t2_decay")
    out = small_tmpfs / "d.h5"
    with pytest.raises(OSError) as info:
        write_dataset(out, model, ParameterSampler(model), 100_000, storage="signals",
                      chunk_rows=4096, check_space=False)
    assert info.value.errno == errno.ENOSPC
    del info
    gc.collect()                             # the HDF5 objects are released without a crash
    assert list(small_tmpfs.iterdir()) == []
    rc, lines = run(capsys, ["dataset", *T2, "--n", "100000", "--storage", "signals", "--out",
                             str(out)])
    assert rc == 2 and "disk space" in one_error_line(lines)   # refused before writing
    assert list(small_tmpfs.iterdir()) == []
    # A nearly full disk answers with short writes; they must not pass for complete ones.
    (small_tmpfs / "filler").write_bytes(b"\0" * 900_000)
    rc, lines = run(capsys, ["basis", *T2, "--k", "30", "--n", "64", "--n-check", "0",
                             "--times", ",".join(str(0.001 * (i + 1)) for i in range(2000)),
                             "--out", str(small_tmpfs / "b.h5")])
    assert rc == 1 and "disk full" in one_error_line(lines)
    assert sorted(p.name for p in small_tmpfs.iterdir()) == ["filler"]


# ---- one writer per output


def test_second_writer_is_refused_while_the_first_holds_the_output(tmp_path, capsys):
    out = tmp_path / "s.npy"
    with locks.hold([out]):
        rc, lines = run(capsys, SIM + [str(out)])
        assert rc == 1
        line = one_error_line(lines)
        assert "in use by another crbnet run" in line and f"pid {os.getpid()}" in line
        assert not out.exists()
    rc, lines = run(capsys, SIM + [str(out)])
    assert rc == 0 and out.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.npy"]   # lock file removed


def test_no_stale_lock_after_kill_9(tmp_path, capsys):
    out = tmp_path / "run"
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom crbnet import locks\n"
         f"with locks.hold([{str(out)!r}]):\n    print('ready', flush=True)\n    time.sleep(600)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in sys.path if p)})
    try:
        assert child.stdout.readline().strip() == "ready"
        rc, lines = run(capsys, ["phantom", *T2, "--shape", "4x4", "--snr", "50", "--out",
                                 str(out)])
        assert rc == 1 and f"pid {child.pid}" in one_error_line(lines)
    finally:
        child.kill()
        child.wait()
    rc, lines = run(capsys, ["phantom", *T2, "--shape", "4x4", "--snr", "50", "--out", str(out)])
    assert rc == 0, lines
    assert (out / "signal.nii.gz").is_file()


# ---- one line, always


def test_argparse_errors_are_one_line(capsys):
    rc, lines = run(capsys, ["train", "--no-such-flag"])
    assert rc == 2
    assert "see crbnet train --help" in one_error_line(lines)


@pytest.fixture
def warn_then(monkeypatch):
    """A command that warns (as a library would) and then does what the test says."""
    import types

    module = types.ModuleType("crbnet.cli._warn_for_test")
    state = {"fail": True}

    def body(args):
        warnings.warn("a library's remark", UserWarning)
        if state["fail"]:
            raise InputError("the real problem")
        return 0

    def register(sub):
        sub.add_parser("warnfake").set_defaults(func=body)

    module.register = register
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(cli, "COMMANDS", cli.COMMANDS + ["_warn_for_test"])
    monkeypatch.delenv("CRBNET_DEBUG", raising=False)
    return state


def test_library_warnings_never_precede_the_error_line(warn_then, capsys):
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        rc, lines = run(capsys, ["warnfake"])
    assert rc == 2 and one_error_line(lines) == "crbnet: error: the real problem"
    assert shown == []                       # held back, then dropped with the failure
    warn_then["fail"] = False
    with pytest.warns(UserWarning, match="a library's remark"):
        rc, lines = run(capsys, ["warnfake"])   # shown once the command succeeded
    assert rc == 0


@pytest.mark.parametrize("argv, text", [
    (["phantom", *T2, "--shape", "4x4", "--snr", "50", "--seed", "-1", "--out", "X"], "seed"),
    (SIM + ["X", "--times", ""], "--times is empty"),
    (["crb", *T2, "--times", " , "], "--times is empty"),
])
def test_negative_seeds_and_empty_lists_are_input_errors(tmp_path, capsys, argv, text):
    rc, lines = run(capsys, [a.replace("X", str(tmp_path / "x")) for a in argv])
    assert rc == 2 and text in one_error_line(lines)


def test_config_values_are_checked_even_when_the_command_line_overrides_them(tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text("[optim]\nepochs = -1\n")
    rc, lines = run(capsys, ["train", *T2, "--config", str(config), "--epochs", "1", "--out",
                             str(tmp_path / "run")])
    assert rc == 2 and "epochs" in one_error_line(lines)
    rc, lines = run(capsys, ["dataset", *T2, "--n", "10", "--config", str(config), "--out",
                             str(tmp_path / "d.h5")])
    assert rc == 2 and "epochs" in one_error_line(lines)
    assert not (tmp_path / "run").exists() and not (tmp_path / "d.h5").exists()


def test_nan_inside_a_training_dataset_is_an_input_error(tmp_path):
    model = models.get("t2_decay")
    path = tmp_path / "d.h5"
    write_dataset(path, model, ParameterSampler(model), 64, storage="signals")
    with h5py.File(path, "r+") as f:
        row = f["signals"][5]
        row[2] = np.nan
        f["signals"][5] = row
    dataset = Dataset(path)
    dataset.read(0, 5)
    with pytest.raises(InputError, match="row 5"):
        dataset.read(0, 64)


def test_nifti_header_with_dim0_9_is_an_input_error(tmp_path, capsys):
    path = tmp_path / "x.nii"
    nib.save(nib.Nifti1Image(np.ones((2, 2, 3), np.complex64), np.eye(4)), path)
    raw = bytearray(path.read_bytes())
    raw[40:42] = np.int16(9).tobytes()
    path.write_bytes(bytes(raw))
    with pytest.raises(InputError, match="cannot read"):
        load_image(path)
    assert capsys.readouterr().err == ""     # nibabel's own repair notes are not shown


def test_lock_of_an_output_in_folders_yet_to_be_made(tmp_path, capsys):
    out = tmp_path / "new" / "sub" / "s.npy"
    with locks.hold([out]):
        rc, lines = run(capsys, SIM + [str(out)])
        assert rc == 1 and "in use" in one_error_line(lines)
    assert not (tmp_path / "new").exists()      # the folders made for the lock are gone
    rc, lines = run(capsys, SIM + [str(out)])
    assert rc == 0 and out.is_file()


def test_a_short_write_on_a_full_disk_names_the_reason_not_a_byte_count(small_tmpfs):
    from crbnet.errors import describe_os_error, output_error

    subprocess.run(["dd", "if=/dev/zero", f"of={small_tmpfs / 'filler'}", "bs=4096"],
                   capture_output=True)
    # numpy and scipy report a failed write without an errno: "N requested and M written"
    exc = output_error(OSError("262144 requested and 4096 written"), small_tmpfs / "b.npy")
    assert exc.errno == errno.ENOSPC
    assert describe_os_error(exc).endswith("disk full (no space left on device)")


def test_design_with_too_many_tissue_points_is_refused_at_once(tmp_path, capsys, monkeypatch):
    """20,000 tissue points on the shipped in-vivo sequence (6852 pulses, 8 parameters): the
    design's signals and Jacobians with their gradient would need ~10² GB; refused before any
    simulation (a spy on the model's only design-time entry fails the test if it is called)."""
    from crbnet.physics.models.mt_generalized_bloch import MTGeneralizedBloch

    def simulated(*args, **kwargs):
        raise AssertionError("the design simulated before refusing")

    monkeypatch.setattr(MTGeneralizedBloch, "signal_for_sequence", simulated)
    root = Path(__file__).resolve().parents[1]
    points = tmp_path / "points.csv"
    row = "0.15,1.8,0.07,16,0.34,1.2e-05,1.0,0.0\n"
    points.write_text("m0s,T1f,T2f,Rx,T1s,T2s,B1,omega0\n" + row * 20_000)
    rc, lines = run(capsys, ["design", "--model", "mt_generalized_bloch", "--sequence",
                             str(root / "examples" / "invivo" / "control.mat"),
                             "--model-option", "TR=3.5e-3", "--model-option",
                             "lineshape=lorentzian", "--points", str(points),
                             "--out", str(tmp_path / "out")])
    assert rc == 2, lines
    assert "would need" in one_error_line(lines) and "tissue points" in lines[0]
    assert not (tmp_path / "out").exists()
