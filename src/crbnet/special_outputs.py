"""Outputs that are not regular files: written through as a stream, or refused — never replaced.

The atomic write (temporary file, then rename) is right for regular files and wrong for
everything else: renaming onto ``/dev/null`` would replace the device with a file. So an output
path that exists and is not a regular file or a folder is looked at first:

* written through as a stream (the complete file is built in a private temporary folder, then
  copied in): ``/dev/null``, ``/dev/zero``, ``/dev/full`` (which answers "disk full"), a
  terminal, a named pipe (FIFO) that has a reader, and this process's own descriptors
  (``/dev/stdout``, ``/dev/stderr``, ``/dev/fd/N``, ``/proc/self/fd/N``: written at the
  descriptor's own position, so ``>>`` appends);
* refused with one line: any other character device (``/dev/mem``, disks, watchdogs ...), block
  devices, sockets, a FIFO without a reader (opening it would wait forever);
* refused: new files in kernel file systems (``/proc``, ``/sys``, ``/dev``, ...), which hold no
  user files (exit code 1, an output that cannot be written).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import tempfile
from pathlib import Path

# (major, minor) of the memory devices that are safe to write: null, zero, full.
_HARMLESS_DEVICES = {(1, 3), (1, 5), (1, 7)}
_KERNEL_FILESYSTEMS = {"proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "debugfs",
                       "securityfs", "tracefs", "configfs", "bpf", "pstore", "efivarfs",
                       "mqueue", "fusectl", "binfmt_misc", "hugetlbfs", "autofs"}
_OWN_FD = re.compile(r"^/(?:proc/(?:self|thread-self|(\d+))/fd|dev/fd)/(\d+)$")


def _refused(path: Path, why: str) -> OSError:
    # EOPNOTSUPP has no fixed wording in crbnet.errors: the line reads "<path>: <why>".
    return OSError(errno.EOPNOTSUPP, why, str(path))


def _own_descriptor(path: Path) -> int | None:
    """The descriptor N when ``path`` names one of this process's open descriptors, directly
    or through symbolic links (``/dev/stdout`` → ``/proc/self/fd/1``)."""
    text = os.path.abspath(path)
    for _ in range(8):
        match = _OWN_FD.match(text)
        if match and (match.group(1) is None or int(match.group(1)) == os.getpid()):
            return int(match.group(2))
        try:
            target = os.readlink(text)
        except OSError:
            return None
        text = os.path.normpath(os.path.join(os.path.dirname(text), target))
    return None


class Stream:
    """A destination written through as a stream: an open descriptor, a device or a FIFO."""

    def __init__(self, path: Path, fd: int | None = None, fifo: bool = False) -> None:
        self.path, self.own_fd, self.fifo = path, fd, fifo
        self.fd: int | None = None

    def open(self) -> None:
        if self.own_fd is not None:
            self.fd = os.dup(self.own_fd)
            return
        flags = os.O_WRONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
        if self.fifo:
            try:
                self.fd = os.open(self.path, flags | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno == errno.ENXIO:
                    raise _refused(self.path, "a named pipe (FIFO) with no reader; start the "
                                              "reader first") from None
                raise
            os.set_blocking(self.fd, True)
        else:
            self.fd = os.open(self.path, flags)

    def copy_from(self, tmp: Path) -> None:
        assert self.fd is not None
        with open(tmp, "rb") as src:
            while block := src.read(1 << 20):
                view = memoryview(block)
                while view:
                    view = view[os.write(self.fd, view):]

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None


def stream_for(path: str | Path) -> Stream | None:
    """How ``path`` is written when it is not a regular destination: a :class:`Stream`, None
    for a regular file, a folder or a path that does not exist yet; OSError (one line) for a
    special file that crbnet refuses to write."""
    path = Path(path)
    fd = _own_descriptor(path)
    if fd is not None:
        try:
            os.fstat(fd)
        except OSError:
            raise _refused(path, f"descriptor {fd} is not open") from None
        return Stream(path, fd=fd)
    try:
        st = os.stat(path)
    except OSError:
        return None
    mode = st.st_mode
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    if stat.S_ISFIFO(mode):
        return Stream(path, fifo=True)
    if stat.S_ISCHR(mode):
        if (os.major(st.st_rdev), os.minor(st.st_rdev)) in _HARMLESS_DEVICES or _is_terminal(path):
            return Stream(path)
        raise _refused(path, "a character device other than /dev/null, /dev/zero, /dev/full or "
                             "a terminal; crbnet does not write to it")
    if stat.S_ISBLK(mode):
        raise _refused(path, "a block device (a disk); crbnet does not write to it")
    if stat.S_ISSOCK(mode):
        raise _refused(path, "a socket; crbnet writes files, folders, pipes and terminals only")
    raise _refused(path, "a special file; crbnet writes files, folders, pipes and terminals only")


def _is_terminal(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError:
        return False
    try:
        return os.isatty(fd)
    finally:
        os.close(fd)


def filesystem_type(path: str | Path) -> str | None:
    """The type of the file system holding ``path`` (its nearest existing part), from
    /proc/self/mountinfo; None where that cannot be read."""
    probe = Path(os.path.abspath(path))
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    target = os.path.realpath(probe)
    best, kind = "", None
    with contextlib.suppress(OSError):
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                left, _, right = line.partition(" - ")
                fields = left.split()
                if len(fields) < 5 or not right:
                    continue
                point = fields[4].replace("\\040", " ")
                inside = target == point or target.startswith(point.rstrip("/") + "/")
                if inside and len(point) >= len(best):
                    best, kind = point, right.split()[0]
    return kind


def check_creatable(path: str | Path) -> None:
    """Refuse (OSError, exit code 1) a file or folder to be created or replaced in a kernel
    file system (/proc, /sys, /dev, ...): none of them holds user files."""
    kind = filesystem_type(path)
    top = Path(os.path.abspath(path)).parts[1:3]
    if kind not in _KERNEL_FILESYSTEMS and top[:1] in (("proc",), ("sys",), ("dev",)) and \
            top != ("dev", "shm"):
        kind = top[0]   # a container's /dev is often a plain tmpfs: the place decides
    if kind in _KERNEL_FILESYSTEMS or kind in ("proc", "sys", "dev"):
        raise _refused(Path(path), f"in a kernel file system ({kind}), which holds no user "
                                   "files; choose an output in an ordinary folder")


def private_folder(path: Path) -> Path:
    """A fresh owner-only temporary folder for the file that will be streamed to ``path``."""
    try:
        return Path(tempfile.mkdtemp(prefix="crbnet-stream-"))
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, tempfile.gettempdir()) from None


__all__ = ["Stream", "stream_for", "check_creatable", "filesystem_type", "private_folder"]
