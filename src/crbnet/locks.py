"""One writer per output: a run holds an exclusive lock on each output it writes.

The lock is ``fcntl.flock`` on a small file beside the output, ``.<name>.lock`` in the output's
folder (inside the output folder itself when only that folder is writable). The kernel releases
the lock when the process ends, however it ends (``kill -9`` included), so there are no stale
locks; the file itself is removed when the run finishes. The holder writes its pid, command line
and start time into the file, so that a second run is refused with one line naming it.

A run that removes the lock file while another process has just opened it cannot let two runs
in: a lock is only taken on the file that is still at the path (same inode), else it retries.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
import time
from pathlib import Path
from typing import Iterator, Sequence

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no locking
    fcntl = None  # type: ignore[assignment]


class OutputInUseError(OSError):
    """Another running process holds the lock of an output (exit code 1)."""


def lock_path(output: str | Path) -> Path | None:
    """Where the lock of ``output`` lives (None: a stream, a kernel file system or nowhere
    writable — nothing to lock)."""
    from crbnet import special_outputs

    out = Path(os.path.abspath(output))
    try:
        if special_outputs.stream_for(out) is not None:
            return None
        special_outputs.check_creatable(out)
    except OSError:
        return None
    parent = out.parent
    if parent.is_dir() and os.access(parent, os.W_OK | os.X_OK):
        return parent / f".{out.name}.lock"
    if out.is_dir() and os.access(out, os.W_OK | os.X_OK):
        return out / ".crbnet.lock"
    return None


def _creatable(folder: Path) -> bool:
    """Whether the missing ``folder`` can be made: its nearest existing parent is a writable
    folder outside the kernel file systems."""
    from crbnet import special_outputs
    from crbnet.limits import nearest_existing

    base = nearest_existing(folder)
    try:
        special_outputs.check_creatable(folder)
    except OSError:
        return False
    return base.is_dir() and os.access(base, os.W_OK | os.X_OK)


def _holder_text(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        raw = os.pread(fd, 4096, 0).decode("utf-8", "replace")
        info = json.loads(raw) if raw.strip() else {}
        started = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(float(info["started"])))
        command = " ".join(str(info.get("command", "?")).split())[:120]
        return f"pid {int(info['pid'])}, `{command}`, started {started}"
    return "a process that has not written its name yet"


def _acquire(path: Path, output: Path) -> int:
    """An open descriptor of ``path`` holding its exclusive lock, or OutputInUseError."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _holder_text(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise OutputInUseError(
                    errno.EBUSY, f"in use by another crbnet run ({holder}); wait for it to "
                                 "finish or choose another output", str(output)) from None
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder removed the file between our open and our lock: retry


def _write_holder(fd: int, command: str | None) -> None:
    info = {"pid": os.getpid(), "command": command or " ".join(["crbnet", *sys.argv[1:]]),
            "started": time.time()}
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)


@contextlib.contextmanager
def hold(outputs: Sequence[str | Path], command: str | None = None) -> Iterator[None]:
    """Hold the locks of ``outputs`` (files or folders) for the duration of the block;
    ``command`` (default: this process's arguments) is what a refused second run is told.

    Outputs whose folder cannot be written are skipped (the write itself will fail with its own
    clear message); a lock held by another process raises :class:`OutputInUseError`. Missing
    folders above an output are made first, so that every run on it finds the lock in the same
    place; those still empty at the end are removed again."""
    from crbnet.files import make_folders, remove_created_folders

    held: list[tuple[int, Path]] = []
    created: list[Path] = []
    try:
        if fcntl is not None:
            seen: set[Path] = set()
            for output in outputs:
                parent = Path(os.path.abspath(output)).parent
                if not parent.exists() and _creatable(parent):
                    with contextlib.suppress(OSError):
                        created += make_folders(parent)
                path = lock_path(output)
                if path is None or path in seen:
                    continue
                seen.add(path)
                try:
                    fd = _acquire(path, Path(output))
                except OutputInUseError:
                    raise
                except OSError:
                    continue  # cannot create a lock file there: the write will say why
                held.append((fd, path))
                _write_holder(fd, command)
        yield
    finally:
        for fd, path in reversed(held):
            with contextlib.suppress(OSError):
                os.unlink(path)
            os.close(fd)
        remove_created_folders(created)


__all__ = ["hold", "lock_path", "OutputInUseError"]
