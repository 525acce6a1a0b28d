"""The fault matrix's hostile categories: special files, outputs under /proc, huge sizes,
concurrent writers, and "one line, always" (argparse, seeds, empty lists, corrupt rows).

Used by ``benchmarks/fault_matrix.py``. Special files are nodes this module makes in its own
work folder (``mknod`` of the null and full devices and of an absent block device, a FIFO, a
socket) — never the machine's ``/dev`` entries — so a version that replaces them destroys
nothing. Huge sizes and concurrent writers run in child processes (a version without the
checks would exhaust memory or run for days: the child has an address-space limit and a
timeout); the others run in this process.

A case is handled when:

* refusals: exit code 1 or 2 (the one a case names, if it names one), exactly one
  ``crbnet: error`` line and no library warning before it, no ``usage:`` block, no traceback, nothing left behind, the special file unchanged (same
  type, device numbers and inode);
* streams: exit code 0, the special file unchanged, the bytes arrived (FIFO, descriptor);
* huge sizes: a refusal within 5 s of the command's start (imports excluded) whose process
  stayed under 1.5 GB resident;
* concurrent writers: the second run is refused (exit 1, one line naming the holder) while the
  first finishes with exit code 0 and its output complete; after ``kill -9`` of a writer, the
  next run on the same output succeeds (no stale lock).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

T2 = ["--model", "t2_decay"]
MAX_REFUSAL_S = 5.0
MAX_RSS_KB = 1_500_000
CHILD_MEMORY = 16 << 30
CHILD_TIMEOUT_S = 240

# A child process: imports crbnet, says it is ready, waits for "go" (concurrent cases), then
# times the command alone and reports exit code, seconds and peak resident memory.
CHILD = r"""
import json, resource, sys, time
argv, report, wait = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3] == "wait"
from crbnet.cli.app import main
open(report + ".ready", "w").close()
if wait:
    sys.stdin.readline()
t0 = time.perf_counter()
try:
    rc = main(argv)
except SystemExit as exc:
    rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
with open(report, "w") as fh:
    json.dump({"rc": rc, "seconds": time.perf_counter() - t0,
               "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}, fh)
sys.exit(rc if isinstance(rc, int) else 1)
"""


# ------------------------------------------------------------------------------------------
# Judging


def error_lines_ok(rc: Any, err: str, codes: tuple[int, ...] = (1, 2)) -> tuple[bool, str]:
    """One ``crbnet: error`` line, nothing foreign before it, the expected exit code."""
    if not isinstance(rc, int):
        return False, str(rc)[:120]
    if rc not in codes:
        return False, f"exit {rc} (expected {'/'.join(map(str, codes))}): {err.strip()[-100:]}"
    if "Traceback" in err or "usage:" in err or "Segmentation" in err:
        return False, "traceback or usage block"
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [i for i, ln in enumerate(lines) if ln.startswith(("crbnet: error",
                                                                 "crbnet: internal error"))]
    if len(errors) != 1 or lines[errors[0]].startswith("crbnet: internal"):
        return False, f"{len(errors)} error lines: {[lines[i] for i in errors][:1]}"
    # progress lines (crbnet's own) may precede a late error; warnings of libraries may not
    foreign = [ln for ln in lines[:errors[0]] if "Warning" in ln or "warn(" in ln]
    if foreign:
        return False, f"a foreign line precedes the error: {foreign[0][:80]}"
    return True, lines[errors[0]][len("crbnet: error: "):][:110]


def node_state(path: Path | None) -> tuple | None:
    if path is None:
        return None
    try:
        st = os.lstat(path)
    except OSError:
        return ("missing",)
    return (stat.S_IFMT(st.st_mode), st.st_rdev, st.st_ino)


def snapshot(folder: Path) -> set[str]:
    if not folder.is_dir():
        return set()
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# ------------------------------------------------------------------------------------------
# Special files


class Specials:
    """Special files in ``folder``: made fresh for each case (a case may consume a FIFO)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.can_mknod = self._try_mknod()

    def _try_mknod(self) -> bool:
        probe = self.folder / "probe"
        try:
            os.mknod(probe, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        except (OSError, AttributeError):
            return False
        probe.unlink()
        return True

    def make(self, kind: str) -> Path:
        path = self.folder / f"{kind}.npy"   # a suffix: basis picks its format by it
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        if kind == "null":
            os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        elif kind == "full":
            os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 7))
        elif kind == "block":       # major 240 (local/experimental): no driver behind it
            os.mknod(path, 0o600 | stat.S_IFBLK, os.makedev(240, 0))
        elif kind in ("fifo", "fifo_reader"):
            os.mkfifo(path)
        elif kind == "socket":
            sock = socket.socket(socket.AF_UNIX)
            sock.bind(str(path))
            sock.close()
        return path


class FifoReader:
    """Reads a FIFO to its end in a thread; ``release`` unblocks it if nobody ever wrote."""

    def __init__(self, path: Path) -> None:
        self.path, self.received = path, 0
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        time.sleep(0.05)

    def _read(self) -> None:
        with contextlib.suppress(OSError):
            with open(self.path, "rb") as fh:
                while block := fh.read(65536):
                    self.received += len(block)

    def release(self) -> None:
        if self.thread.is_alive():
            with contextlib.suppress(OSError):
                os.close(os.open(self.path, os.O_WRONLY | os.O_NONBLOCK))
        self.thread.join(2)


# ------------------------------------------------------------------------------------------
# Cases


class Case:
    def __init__(self, command: str, category: str, what: str, argv: list[str], watch: Path,
                 expect: str = "refuse", codes: tuple[int, ...] = (1, 2),
                 special: str | None = None, isolated: bool = False,
                 first: list[str] | None = None, output: Path | None = None,
                 kill_first: bool = False, prepare: Callable[[], None] | None = None) -> None:
        self.command, self.category, self.what, self.argv = command, category, what, argv
        self.watch, self.expect, self.codes, self.special = watch, expect, codes, special
        self.isolated, self.first, self.output = isolated, first, output
        self.kill_first, self.prepare = kill_first, prepare


def _argv_with(argv: list[str], placeholder: str, value: str) -> list[str]:
    return [value if a == placeholder else a for a in argv]


def build(f: dict[str, Path], w: Path, run_cli: Callable, specials: Specials) -> list[Case]:
    """Every hostile case for every command it applies to."""
    out: list[Case] = []
    o = w / "outs"
    ck = str(f["ckpt"])
    tiny = ["--config", str(f["tiny"]), "--no-progress"]
    file_cmds = {
        "simulate": ["simulate", *T2, "--out", "OUT"],
        "fit": ["fit", "--method", "nlls", *T2, "--input", str(f["sig"]), "--out", "OUT"],
        "dataset": ["dataset", *T2, "--n", "50", "--out", "OUT"],
        "basis": ["basis", *T2, "--k", "3", "--n", "64", "--n-check", "0", "--out", "OUT"],
    }
    folder_cmds = {
        "phantom": ["phantom", *T2, "--shape", "8x8", "--snr", "50", "--out", "OUT"],
        "apply": ["apply", "--method", "nlls", *T2, "--input", str(f["signal"]), "--out", "OUT"],
        "train": ["train", *T2, *tiny, "--out", "OUT"],
        "evaluate": ["evaluate", "--checkpoint", ck, "--grid", "3", "--realizations", "4",
                     "--out", "OUT"],
        "compare": ["compare", ck, "--voxels", "64", "--out", "OUT"],
        "design": ["design", "--model", "mt_hybrid_state", "--control-points", "4", "--starts",
                   "1", "--max-iterations", "1", "--tissue", "WM", "--out", "OUT"],
        "demo": ["demo", "--minutes-per-net", "0.01", "--no-progress", "--out", "OUT"],
    }

    # ---- special files
    if specials.can_mknod:
        file_kinds = [("null", "stream", (0,)), ("full", "refuse", (1,)),
                      ("block", "refuse", (1,))]
    else:
        file_kinds = []
    file_kinds += [("fifo", "refuse", (1,)), ("fifo_reader", "stream", (0,)),
                   ("socket", "refuse", (1,)), ("descriptor", "stream", (0,))]
    for cmd, argv in file_cmds.items():
        for kind, expect, codes in file_kinds:
            out.append(Case(cmd, "special files", f"--out is {kind.replace('_', ' + ')}", argv,
                            specials.folder, expect, codes, special=kind))
    folder_kinds = (["null"] if specials.can_mknod else []) + ["fifo", "socket"]
    for cmd, argv in folder_cmds.items():
        for kind in folder_kinds:
            out.append(Case(cmd, "special files", f"--out folder is a {kind}", argv,
                            specials.folder, "refuse", (1,), special=kind))

    # ---- outputs under /proc (an output that cannot be written: exit 1)
    for cmd, argv in {**file_cmds, **folder_cmds}.items():
        name = "x.npy" if cmd in ("simulate", "fit", "basis") else "x.h5" if cmd == "dataset" \
            else "x"
        out.append(Case(cmd, "outputs under /proc", "--out under /proc",
                        _argv_with(argv, "OUT", f"/proc/crbnet-fault/{name}"), w, codes=(1,)))

    # ---- huge sizes: refused at once, nothing large allocated
    huge = [
        ("dataset", "--n 10^15", ["dataset", *T2, "--n", str(10 ** 15), "--out", str(o / "d.h5")]),
        ("train", "--batch-size 10^9", ["train", *T2, *tiny, "--batch-size", str(10 ** 9),
                                        "--out", str(o / "r")]),
        ("train", "net.width = 10^8 (config)", ["train", *T2, "--config", str(f["cfg_wide"]),
                                                "--no-progress", "--out", str(o / "r")]),
        ("train", "--set net.depth=10^7", ["train", *T2, *tiny, "--set", "net.depth=10000000",
                                           "--out", str(o / "r")]),
        ("train", "--set data.pool_size=10^12", ["train", *T2, *tiny, "--set",
                                                 "data.pool_size=1000000000000", "--out",
                                                 str(o / "r")]),
        ("evaluate", "--grid 10^5 x --realizations 10^5",
         ["evaluate", "--method", "nlls", *T2, "--grid", "100000", "--realizations", "100000",
          "--out", str(o / "e")]),
        ("evaluate", "--samples 10^12", ["evaluate", "--checkpoint", ck, "--samples",
                                         str(10 ** 12), "--realizations", "2", "--out",
                                         str(o / "e")]),
        ("evaluate", "--points WM x --realizations 10^12",
         ["evaluate", "--checkpoint", ck, "--points", str(f["points_csv"]), "--realizations",
          str(10 ** 12), "--out", str(o / "e")]),
        ("compare", "--voxels 10^12", ["compare", ck, "--voxels", str(10 ** 12), "--out",
                                       str(o / "c")]),
        ("phantom", "--shape 100000x100000", ["phantom", *T2, "--shape", "100000x100000",
                                              "--snr", "50", "--out", str(o / "p")]),
        ("fit", "dictionary of 10^13 atoms", ["fit", "--method", "dictionary", *T2, "--option",
                                              "n_points=10000000000000", "--input",
                                              str(f["sig"]), "--out", str(o / "e.npy")]),
        ("apply", "dictionary of 10^13 atoms", ["apply", "--method", "dictionary", *T2,
                                                "--option", "n_points=10000000000000",
                                                "--input", str(f["signal"]), "--out",
                                                str(o / "m")]),
        ("basis", "--n 10^11", ["basis", *T2, "--k", "3", "--n", str(10 ** 11), "--out",
                                str(o / "b.npy")]),
    ]
    for cmd, what, argv in huge:
        out.append(Case(cmd, "huge sizes", what, argv, o, codes=(2,), isolated=True))

    # ---- concurrent writers: the second is refused, the first completes
    slow = {
        "dataset": ["dataset", *T2, "--n", "30000", "--storage", "signals", "--out",
                    str(o / "cd.h5")],
        "train": ["train", *T2, *tiny, "--epochs", "6", "--out", str(o / "cr")],
        "phantom": ["phantom", *T2, "--shape", "96x96x8", "--snr", "50", "--out",
                    str(o / "cp")],
        "apply": ["apply", "--method", "nlls", *T2, "--input", str(f["signal"]), "--out",
                  str(o / "ca")],
        "evaluate": ["evaluate", "--method", "nlls", *T2, "--grid", "12", "--realizations", "50",
                     "--out", str(o / "ce")],
        "compare": ["compare", ck, "nlls", "--voxels", "600", "--out", str(o / "cc")],
        "fit": ["fit", "--method", "nlls", *T2, "--input", str(f["many"]), "--out",
                str(o / "cf.npy")],
        "basis": ["basis", *T2, "--k", "3", "--n", "200000", "--out", str(o / "cb.npy")],
        "design": ["design", "--model", "mt_hybrid_state", "--control-points", "4", "--starts",
                   "1", "--max-iterations", "3", "--tissue", "WM", "--out", str(o / "cg")],
        "demo": ["demo", "--minutes-per-net", "0.05", "--no-progress", "--out", str(o / "cm")],
    }
    for cmd, argv in slow.items():
        output = Path(argv[argv.index("--out") + 1])
        out.append(Case(cmd, "concurrent writers", "second run on the same output", argv, o,
                        codes=(1,), isolated=True, first=argv, output=output))
    resume = ["train", *T2, *tiny, "--epochs", "8", "--resume", "--out", str(o / "cr2")]
    out.append(Case("train", "concurrent writers", "second --resume of a running run", resume,
                    o, codes=(1,), isolated=True, first=resume, output=o / "cr2"))
    for cmd in ("train", "phantom"):
        argv = slow[cmd] + (["--resume"] if cmd == "train" else [])
        out.append(Case(cmd, "concurrent writers", "next run after kill -9 of a writer", argv,
                        o, expect="after_kill", codes=(0,), isolated=True, first=argv,
                        output=Path(argv[argv.index("--out") + 1]), kill_first=True))

    # ---- one line, always
    for cmd in ("demo", "models", "simulate", "crb", "design", "dataset", "train", "fit",
                "evaluate", "compare", "phantom", "apply", "basis"):
        out.append(Case(cmd, "one line", "argparse error (unknown flag)",
                        [cmd, "--no-such-flag"], w, codes=(2,)))
    seeded = {"basis": file_cmds["basis"], "compare": folder_cmds["compare"],
              "dataset": file_cmds["dataset"], "demo": folder_cmds["demo"],
              "design": folder_cmds["design"], "evaluate": folder_cmds["evaluate"],
              "phantom": folder_cmds["phantom"], "train": folder_cmds["train"]}
    for cmd, argv in seeded.items():
        out.append(Case(cmd, "one line", "--seed -1",
                        _argv_with(argv, "OUT", str(o / "s")) + ["--seed", "-1"], o, codes=(2,)))
    times_cmds = {"simulate": file_cmds["simulate"], "fit": file_cmds["fit"],
                  "dataset": file_cmds["dataset"], "basis": file_cmds["basis"],
                  "phantom": folder_cmds["phantom"], "train": folder_cmds["train"],
                  "crb": ["crb", *T2, "--param", "T2=0.05"]}
    for cmd, argv in times_cmds.items():
        out.append(Case(cmd, "one line", '--times ""',
                        _argv_with(argv, "OUT", str(o / "t.npy")) + ["--times", ""], o,
                        codes=(2,)))
    out += [
        Case("train", "one line", "NaN inside the training dataset",
             ["train", *T2, "--dataset", str(f["ds_nan"]), "--batch-size", "32", "--epochs",
              "1", "--set", "data.val_size=64", "--no-progress", "--out", str(o / "r")], o,
             codes=(2,)),
        Case("apply", "one line", "NIfTI header dim[0] = 9",
             ["apply", "--method", "nlls", *T2, "--input", str(f["dim9"]), "--out",
              str(o / "m")], o, codes=(2,)),
        Case("compare", "one line", "a pickled object as checkpoint",
             ["compare", str(f["pickled"]), *T2, "--out", str(o / "c")], o, codes=(2,)),
        Case("train", "one line", "config epochs = -1 overridden by --epochs",
             ["train", *T2, "--config", str(f["cfg_epochs_neg"]), "--epochs", "1",
              "--no-progress", "--out", str(o / "r")], o, codes=(2,)),
        Case("dataset", "one line", "config [optim] lr = -1 (unused table)",
             ["dataset", *T2, "--n", "20", "--config", str(f["cfg_lr_neg"]), "--out",
              str(o / "d.h5")], o, codes=(2,)),
        Case("evaluate", "one line", '--grid-parameters ""',
             ["evaluate", "--checkpoint", ck, "--grid-parameters", "", "--out", str(o / "e")],
             o, codes=(2,)),
    ]
    return out


def extra_fixtures(f: dict[str, Path], w: Path) -> None:
    """Inputs of the hostile cases (beside the fault matrix's own fixtures)."""
    import h5py
    import numpy as np
    import shutil

    (w / "wide.toml").write_text("[net]\nwidth = 100000000\ndepth = 2\n")
    f["cfg_wide"] = w / "wide.toml"
    (w / "epochs_neg.toml").write_text("[optim]\nepochs = -1\n[net]\nwidth = 16\ndepth = 1\n")
    f["cfg_epochs_neg"] = w / "epochs_neg.toml"
    (w / "lr_neg.toml").write_text("[optim]\nlr = -1.0\n")
    f["cfg_lr_neg"] = w / "lr_neg.toml"
    (w / "points.csv").write_text("name,T2\nWM,0.07\n")
    f["points_csv"] = w / "points.csv"
    f["ds_nan"] = w / "ds_nan.h5"
    shutil.copy(f["ds"], f["ds_nan"])
    with h5py.File(f["ds_nan"], "r+") as h:
        storage = h.attrs["storage"]
        storage = storage.decode() if isinstance(storage, bytes) else storage
        row = h[storage][3]
        row[0] = np.nan
        h[storage][3] = row
    raw = bytearray(__import__("gzip").open(f["signal"]).read())
    raw[40:42] = struct.pack("<h", 9)
    (w / "dim9").mkdir(exist_ok=True)
    f["dim9"] = w / "dim9" / "signal.nii"
    f["dim9"].write_bytes(bytes(raw))
    shutil.copy(w / "ph" / "signal.json", w / "dim9" / "signal.json")
    import pickle

    f["pickled"] = w / "pickled.pt"
    f["pickled"].write_bytes(pickle.dumps({"network": {"weights": [1.0, 2.0]},
                                           "note": io.StringIO}))
    signals = np.load(f["sig"])
    f["many"] = w / "many.npy"
    np.save(f["many"], np.repeat(signals, 3000, axis=0))


# ------------------------------------------------------------------------------------------
# Running


def _child(argv: list[str], report: Path, wait: bool) -> subprocess.Popen:
    def limits() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY, CHILD_MEMORY))

    return subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(argv), str(report),
                             "wait" if wait else "now"], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=limits, start_new_session=True)


def _finish(proc: subprocess.Popen, report: Path, timeout: float) -> tuple[Any, str, dict]:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        return f"hang: still running after {timeout:.0f} s", err, {}
    info = json.loads(report.read_text()) if report.is_file() else {}
    rc: Any = proc.returncode
    if rc < 0:
        rc = f"killed by signal {-rc}"
    return rc, err, info


def _wait_ready(report: Path, proc: subprocess.Popen, timeout: float = 180) -> bool:
    t0 = time.time()
    while not Path(str(report) + ".ready").exists():
        if proc.poll() is not None or time.time() - t0 > timeout:
            return False
        time.sleep(0.05)
    return True


def _lock_appears(output: Path, proc: subprocess.Popen, timeout: float = 30) -> None:
    """Wait until the first writer holds its lock (a version without locks: a fixed 3 s)."""
    lock = output.parent / f".{output.name}.lock"
    t0 = time.time()
    while not lock.exists() and proc.poll() is None and time.time() - t0 < timeout:
        time.sleep(0.02)
    if not lock.exists():
        time.sleep(max(0.0, 3 - (time.time() - t0)))


def run_isolated(case: Case, tmp: Path) -> tuple[bool, str]:
    report_b = tmp / "b.json"
    for p in tmp.glob("*.json*"):
        p.unlink()
    if case.first is None:
        proc = _child(case.argv, report_b, wait=False)
        rc, err, info = _finish(proc, report_b, CHILD_TIMEOUT_S)
        ok, note = error_lines_ok(rc, err, case.codes)
        if ok and case.category == "huge sizes":
            if info.get("seconds", 1e9) > MAX_REFUSAL_S:
                return False, f"refused after {info['seconds']:.1f} s"
            if info.get("maxrss_kb", 1e12) > MAX_RSS_KB:
                return False, f"peak memory {info['maxrss_kb'] / 1e6:.2f} GB"
            note = f"{info['seconds']:.2f} s, {info['maxrss_kb'] / 1e6:.2f} GB: {note}"
        return ok, note
    report_a = tmp / "a.json"
    a = _child(case.first, report_a, wait=True)
    b = _child(case.argv, report_b, wait=True)
    if not (_wait_ready(report_a, a) and _wait_ready(report_b, b)):
        for p in (a, b):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
        return False, "a child did not start"
    a.stdin.write("go\n")
    a.stdin.flush()
    _lock_appears(case.output, a)
    if case.kill_first:
        os.killpg(a.pid, signal.SIGKILL)
        a.communicate()
        b.stdin.write("go\n")
        b.stdin.flush()
        rc, err, _ = _finish(b, report_b, CHILD_TIMEOUT_S)
        if rc != 0:
            return False, f"next run after kill -9: exit {rc}: {err.strip()[-120:]}"
        return True, "next run succeeded (no stale lock)"
    b.stdin.write("go\n")
    b.stdin.flush()
    rc_b, err_b, _ = _finish(b, report_b, CHILD_TIMEOUT_S)
    first_alive = a.poll() is None
    if case.command == "demo":      # minutes of training: the refusal is what is tested
        with contextlib.suppress(ProcessLookupError):
            os.killpg(a.pid, signal.SIGKILL)
        a.communicate()
        rc_a: Any = 0
    else:
        rc_a, err_a, _ = _finish(a, report_a, CHILD_TIMEOUT_S)
    ok, note = error_lines_ok(rc_b, err_b, (1,))
    if not ok:
        return False, f"second run: {note}" + ("" if first_alive else
                                               " (the first had already ended)")
    if rc_a != 0:
        return False, f"first run: exit {rc_a}"
    if case.command != "demo" and not case.output.exists():
        return False, "first run's output missing"
    return True, note


def run_in_process(case: Case, run_cli: Callable, specials: Specials) -> tuple[bool, str]:
    argv, special, reader, fd = list(case.argv), None, None, None
    sink = None
    if case.special == "descriptor":
        sink = specials.folder / "descriptor-sink"
        fd = os.open(sink, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        argv = _argv_with(argv, "OUT", f"/dev/fd/{fd}")
        special = Path(f"/proc/self/fd/{fd}")
    elif case.special is not None:
        special = specials.make(case.special)
        argv = _argv_with(argv, "OUT", str(special))
        if case.special == "fifo_reader":
            reader = FifoReader(special)
    before_state = node_state(special) if case.special != "descriptor" else None
    before = snapshot(case.watch)
    try:
        rc, err = run_cli(argv)
    finally:
        if reader is not None:
            reader.release()
        if fd is not None:
            os.close(fd)
    after = snapshot(case.watch)
    if case.special not in (None, "descriptor") and node_state(special) != before_state:
        return False, f"the {case.special} was replaced: {node_state(special)}"
    if case.expect == "stream":
        if rc != 0:
            return False, f"exit {rc}: {err.strip()[-120:]}"
        received = reader.received if reader is not None else \
            (sink.stat().st_size if sink is not None else None)
        if received == 0:
            return False, "nothing arrived in the stream"
        note = "written through" + (f" ({received} bytes)" if received else "")
        return True, note
    ok, note = error_lines_ok(rc, err, case.codes)
    new = {p for p in after - before if not p.startswith(tuple(Specials.KINDS))}
    if ok and new:
        return False, f"left behind: {sorted(new)[:3]}"
    return ok, note


Specials.KINDS = ("null", "full", "block", "fifo", "fifo_reader", "socket", "descriptor-sink",
                  "probe")


def run_all(f: dict[str, Path], w: Path, run_cli: Callable, skip: set[str],
            say: Callable[[str], None]) -> list[dict]:
    """Run every hostile case; rows as the fault matrix writes them."""
    extra_fixtures(f, w)
    specials = Specials(w / "specials")
    tmp = w / "children"
    tmp.mkdir(exist_ok=True)
    rows = []
    for case in build(f, w, run_cli, specials):
        if case.command in skip or case.what in skip or case.category in skip:
            continue
        t0 = time.perf_counter()
        if case.isolated:
            ok, note = run_isolated(case, tmp)
        else:
            ok, note = run_in_process(case, run_cli, specials)
        rows.append({"command": case.command, "category": case.category, "case": case.what,
                     "handled": ok, "note": note, "seconds": time.perf_counter() - t0})
        say(f"{'ok ' if ok else 'BAD'} {case.command:<9} {case.category:<20} {case.what:<36} "
            f"{note}")
        for p in (w / "outs").iterdir():
            import shutil

            shutil.rmtree(p) if p.is_dir() else p.unlink()
    return rows


__all__ = ["run_all", "build", "error_lines_ok", "MAX_REFUSAL_S"]
