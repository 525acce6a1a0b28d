"""Faults end in one line and an exit code, leave nothing half-written, never accept corrupt data.

One test (or parametrized group) per category: the CLI's error boundary, output locations,
configuration types, text decoding, corrupt data, nothing half-written and permissions, and a
full disk during train, apply and phantom (a real tmpfs when the tests run as root, else a
rename that fails with ENOSPC).
"""

import contextlib
import errno
import json
import os
import stat
import subprocess
import sys
import types

import h5py
import numpy as np
import pytest

from crbnet.cli import app as cli
from crbnet.errors import InputError
from crbnet.imaging.nifti import NiftiSignals
from crbnet.learning.hdf5_dataset import Dataset

pytestmark = pytest.mark.usefixtures("one_thread")

T2 = ["--model", "t2_decay"]
TINY = ["--epochs", "1", "--set", "data.batches_per_epoch=2", "--set", "data.batch_size=32",
        "--set", "data.val_size=32", "--set", "subspace.n_fit=64", "--set", "subspace.n_check=0",
        "--set", "net.width=8", "--set", "net.depth=1", "--no-progress"]
PHANTOM = ["phantom", *T2, "--shape", "10x10", "--snr", "50"]


def run(argv, capsys):
    """(exit code, the one error line) of an in-process CLI call; fails on more error lines."""
    rc = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines()
             if ln.startswith(("crbnet: error", "crbnet: internal", "crbnet: interrupted"))]
    assert len(lines) <= 1, lines
    return rc, (lines[0] if lines else "")


def entries(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("ph") / "ph"
    assert cli.main(PHANTOM + ["--out", str(out)]) == 0
    return out


# ---- 1. the error boundary ----------------------------------------------------------------------

@pytest.fixture
def fake_command(monkeypatch):
    """A command module added the way a new command is (a file in crbnet/commands and a name
    in cli.COMMANDS), whose run raises what the test puts in ``raise_this``."""
    module = types.ModuleType("crbnet.cli._fake_for_test")
    state = {"raise_this": None}

    def register(sub):
        p = sub.add_parser("fake")
        p.set_defaults(func=lambda args: (_ for _ in ()).throw(state["raise_this"]))

    module.register = register
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(cli, "COMMANDS", cli.COMMANDS + ["_fake_for_test"])
    monkeypatch.delenv("CRBNET_DEBUG", raising=False)
    return state


@pytest.mark.parametrize("exc, code, text", [
    (InputError("bad value for x"), 2, "crbnet: error: bad value for x"),
    (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), 2, "not UTF-8"),
    (OSError(errno.ENOSPC, "No space left on device", "/data/out.npy"), 1,
     "crbnet: error: /data/out.npy: disk full"),
    (PermissionError(errno.EACCES, "Permission denied", "/data"), 1, "/data: permission denied"),
    (TypeError("something\nspanning lines"), 1, "internal error: TypeError: something"),
])
def test_new_command_is_covered_by_the_boundary(fake_command, capsys, exc, code, text):
    fake_command["raise_this"] = exc
    rc, line = run(["fake"], capsys)
    assert rc == code and text in line


def test_debug_flag_and_variable_show_the_traceback(fake_command, capsys, monkeypatch):
    fake_command["raise_this"] = TypeError("boom")
    for argv in (["--debug", "fake"], ["fake", "--debug"]):
        with pytest.raises(TypeError, match="boom"):
            cli.main(argv)
    monkeypatch.setenv("CRBNET_DEBUG", "1")
    with pytest.raises(TypeError, match="boom"):
        cli.main(["fake"])
    monkeypatch.setenv("CRBNET_DEBUG", "0")
    assert cli.main(["fake"]) == 1


def test_no_traceback_from_a_separate_process(tmp_path):
    res = subprocess.run([sys.executable, "-m", "crbnet", "simulate", *T2, "--out",
                          str(tmp_path)], capture_output=True, text=True,
                         env={**os.environ, "CRBNET_DEBUG": ""})
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [
        f"crbnet: error: {tmp_path}: is a folder, a file is needed here"]


# ---- 2. output locations, checked before any work -----------------------------------------------

@pytest.fixture
def readonly_dir(tmp_path):
    """A folder nobody may write to: a read-only tmpfs as root (root ignores modes), else 0555."""
    path = tmp_path / "ro"
    path.mkdir()
    if os.geteuid() == 0:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,ro", "tmpfs",
                                  str(path)], capture_output=True).returncode == 0
        if not mounted:
            pytest.skip("root without permission to mount a tmpfs")
        yield path
        subprocess.run(["umount", str(path)], capture_output=True)
    else:
        path.chmod(0o555)
        yield path
        path.chmod(0o755)


def test_wrong_output_locations_fail_fast_with_one_line(tmp_path, readonly_dir, capsys):
    folder, file = tmp_path / "folder", tmp_path / "file"
    folder.mkdir()
    file.write_text("keep")
    sim = ["simulate", *T2]
    fit_in = tmp_path / "s.npy"
    assert cli.main(sim + ["--out", str(fit_in)]) == 0
    cases = {
        "simulate: folder where a file goes": (sim + ["--out", folder], str(folder)),
        "simulate: read-only folder": (sim + ["--out", readonly_dir / "s.npy"],
                                       str(readonly_dir)),
        "dataset: folder where a file goes": (["dataset", *T2, "--n", "10", "--out", folder],
                                              str(folder)),
        "fit: --m0-out is a folder": (["fit", "--method", "dictionary", *T2, "--input", fit_in,
                                       "--out", tmp_path / "est.npy", "--m0-out", folder],
                                      str(folder)),
        # train used to find this only when writing after the first epoch
        "train: file where a folder goes": (["train", *T2, *TINY, "--out", file], str(file)),
        "evaluate: file where a folder goes": (["evaluate", "--method", "nlls", *T2, "--out",
                                                file / "x"], str(file)),
        "phantom: read-only folder": (PHANTOM + ["--out", readonly_dir / "p"],
                                      str(readonly_dir)),
    }
    before = entries(tmp_path)
    for what, (argv, path) in cases.items():
        rc, line = run(argv, capsys)
        assert rc == 1, (what, line)
        assert line.startswith(f"crbnet: error: {path}: "), (what, line)
    assert entries(tmp_path) == before          # no estimates file, no run folder, no temp
    assert file.read_text() == "keep"


# ---- 3. configuration: one typed schema ---------------------------------------------------------

@pytest.mark.parametrize("extra, key", [
    (["--set", "optim.epochs=abc"], "optim.epochs must be an integer"),
    (["--set", 'net.width="wide"'], "net.width must be an integer"),
    (["--set", "optim.lr=[1,2]"], "optim.lr must be a finite number"),
    (["--lr", "inf"], "optim.lr must be a finite number"),
    (["--set", "net.residual=3"], "net.residual must be true or false"),
    (["--set", "data.snr=abc"], "data.snr must be"),
    (["--config", "model_fixed_5.toml"], "model.fixed must be a table"),
    (["--config", "seed_text.toml"], "seed must be an integer"),
    (["--config", "net_5.toml"], "[net] must be a table"),
])
def test_config_values_of_the_wrong_type_are_refused_before_training(tmp_path, capsys, extra,
                                                                     key):
    (tmp_path / "model_fixed_5.toml").write_text("[model]\nfixed = 5\n")
    (tmp_path / "seed_text.toml").write_text('seed = "x"\n')
    (tmp_path / "net_5.toml").write_text("net = 5\n")
    extra = [str(tmp_path / e) if e.endswith(".toml") else e for e in extra]
    rc, line = run(["train", *T2, *TINY, *extra, "--out", tmp_path / "run"], capsys)
    assert rc == 2 and key in line, line
    assert not (tmp_path / "run").exists()


# ---- 4. text that is not UTF-8 ------------------------------------------------------------------

def test_text_inputs_that_are_not_utf8_are_input_errors(tmp_path, phantom_dir, capsys):
    seq = tmp_path / "seq.json"
    seq.write_bytes('{"times": [0.01, 0.02, 0.04], "note": "é"}'.encode("latin-1"))
    cfg = tmp_path / "c.toml"
    cfg.write_bytes("# réglage\n[optim]\nepochs = 1\n".encode("latin-1"))
    rc, line = run(["simulate", *T2, "--sequence", seq, "--out", tmp_path / "s.npy"], capsys)
    assert rc == 2 and "not UTF-8" in line and str(seq) in line
    rc, line = run(["train", *T2, "--config", cfg, "--out", tmp_path / "run"], capsys)
    assert rc == 2 and "not UTF-8" in line and str(cfg) in line
    copy = tmp_path / "img"
    copy.mkdir()
    (copy / "signal.nii.gz").write_bytes((phantom_dir / "signal.nii.gz").read_bytes())
    (copy / "signal.json").write_bytes(b'{"Model": "t2_decay\xff"}')
    with pytest.raises(InputError, match="not UTF-8"):
        NiftiSignals(copy / "signal.nii.gz")


# ---- 5. corrupt data is never accepted ----------------------------------------------------------

def test_corrupt_compressed_nifti_is_refused_before_estimating(tmp_path, phantom_dir, capsys):
    raw = bytearray((phantom_dir / "signal.nii.gz").read_bytes())
    mid = len(raw) // 2
    raw[mid:mid + 64] = bytes(b ^ 0xFF for b in raw[mid:mid + 64])
    bad = tmp_path / "in" / "signal.nii.gz"
    bad.parent.mkdir()
    bad.write_bytes(bytes(raw))
    outs = tmp_path / "outs"
    outs.mkdir()
    for extra in ([], ["--mask", phantom_dir / "mask.nii.gz"]):
        rc, line = run(["apply", "--method", "nlls", *T2, "--input", bad, *extra, "--out",
                        outs / "maps"], capsys)
        assert rc == 2 and "corrupt" in line and str(bad) in line, line
    assert list(outs.iterdir()) == []
    good = (phantom_dir / "signal.nii.gz").read_bytes()
    bad.write_bytes(good[: len(good) // 2])
    with pytest.raises(InputError, match="corrupt"):
        NiftiSignals(bad)


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("ds") / "d.h5"
    assert cli.main(["dataset", *T2, "--n", "40", "--out", str(path)]) == 0
    return path


@pytest.mark.parametrize("change, message", [
    (lambda a: a.__delitem__("storage"), "'storage' is missing"),
    (lambda a: a.__setitem__("storage", 5), "'storage' must be"),
    (lambda a: a.__setitem__("model", "{not json"), "'model' must be a JSON object"),
    (lambda a: a.__setitem__("model", json.dumps({"name": "t2_decay"})), "missing"),
    (lambda a: a.__setitem__("sampling", "[1]"), "'sampling' must be a JSON object"),
    (lambda a: a.__setitem__("seed", "zero"), "'seed' must be an integer"),
])
def test_malformed_dataset_attributes_are_input_errors(tmp_path, small_dataset, change, message):
    path = tmp_path / "d.h5"
    path.write_bytes(small_dataset.read_bytes())
    with h5py.File(path, "r+") as f:
        change(f.attrs)
    with pytest.raises(InputError, match=message):
        Dataset(path)


def test_non_numeric_npy_is_refused(tmp_path, capsys):
    for name, array, kw in (("strings", np.array([["a", "b"]]), {}),
                            ("objects", np.array([{"a": 1}], dtype=object),
                             {"allow_pickle": True})):
        path = tmp_path / f"{name}.npy"
        np.save(path, array, **kw)
        rc, line = run(["fit", "--method", "nlls", *T2, "--input", path, "--out",
                        tmp_path / "e.npy"], capsys)
        assert rc == 2 and str(path) in line, line
    assert not (tmp_path / "e.npy").exists()


# ---- 6. permissions follow the umask ------------------------------------------------------------

@contextlib.contextmanager
def umask(mask):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def test_output_folders_and_files_follow_the_umask(tmp_path, capsys):
    with umask(0o027):
        assert cli.main(PHANTOM + ["--out", str(tmp_path / "ph")]) == 0
        assert cli.main(["apply", "--method", "nlls", *T2, "--input",
                         str(tmp_path / "ph" / "signal.nii.gz"), "--mask",
                         str(tmp_path / "ph" / "mask.nii.gz"), "--no-uncertainty", "--out",
                         str(tmp_path / "maps")]) == 0
    for folder in (tmp_path / "ph", tmp_path / "maps"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o750, folder
        for f in folder.iterdir():
            assert stat.S_IMODE(f.stat().st_mode) == 0o640, f


# ---- 7. a full disk during train, apply and phantom ---------------------------------------------

def _fill(folder):
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        for size in (1 << 16, 4096, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)


def _disk_modes():
    return ["tmpfs", "rename"] if os.geteuid() == 0 else ["rename"]


@pytest.fixture(params=_disk_modes())
def full_disk(request, tmp_path, monkeypatch):
    """A folder on a full disk: a small tmpfs filled to the last byte (as root), or (else) a
    disk on which every file and folder can be written but none renamed into place (rename(2)
    fails with ENOSPC when a directory cannot grow)."""
    path = tmp_path / "disk"
    path.mkdir()
    if request.param == "tmpfs":
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(path)],
                          capture_output=True).returncode != 0:
            pytest.skip("cannot mount a tmpfs")
        _fill(path)
        yield path
        subprocess.run(["umount", str(path)], capture_output=True)
        return

    def no_space(src, dst, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(dst))

    (path / "filler").write_bytes(b"")
    monkeypatch.setattr(os, "replace", no_space)
    monkeypatch.setattr(os, "rename", no_space)
    yield path


@pytest.mark.parametrize("command", ["train", "phantom", "apply"])
def test_full_disk_leaves_nothing_behind(full_disk, phantom_dir, capsys, command):
    out = full_disk / "sub" / "out"
    argv = {"train": ["train", *T2, *TINY],
            "phantom": PHANTOM,
            "apply": ["apply", "--method", "nlls", *T2, "--input",
                      phantom_dir / "signal.nii.gz", "--mask", phantom_dir / "mask.nii.gz"]
            }[command]
    rc, line = run(argv + ["--out", out], capsys)
    assert rc == 1, line
    assert line.startswith(f"crbnet: error: {out}") and line.endswith(
        "disk full (no space left on device)"), line
    assert entries(full_disk) == ["filler"]     # no run folder, no temporary, no empty parent
