"""Running and judging the fault matrix's hostile cases (``fault_cases_hostile.py`` lists
them): special files made in the matrix's own folder, FIFO readers, child processes with an
address-space limit and a timeout, concurrent pairs of runs, and the judges of each kind of case
(see ``fault_cases_hostile.py`` for what "handled" means).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

MAX_REFUSAL_S = 5.0
MAX_RSS_KB = 1_500_000
CHILD_MEMORY = 16 << 30
CHILD_TIMEOUT_S = 240      # concurrent writers: the first run must finish
REFUSAL_TIMEOUT_S = 90     # huge sizes: a child still running by then hangs (imports ~10 s)

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
from crbnet.files import write_json
write_json(report, {"rc": rc, "seconds": time.perf_counter() - t0,
                    "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss})
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


def argv_with(argv: list[str], placeholder: str, value: str) -> list[str]:
    return [value if a == placeholder else a for a in argv]


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
        with contextlib.suppress(ProcessLookupError):
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
        rc, err, info = _finish(proc, report_b, REFUSAL_TIMEOUT_S)
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
        with contextlib.suppress(ProcessLookupError):   # it may have finished already
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
        argv = argv_with(argv, "OUT", f"/dev/fd/{fd}")
        special = Path(f"/proc/self/fd/{fd}")
    elif case.special is not None:
        special = specials.make(case.special)
        argv = argv_with(argv, "OUT", str(special))
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
