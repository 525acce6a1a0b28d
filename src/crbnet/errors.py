"""Exception types and their one-line descriptions.

Two kinds of failure reach a user:

* bad input (:class:`InputError`): an unknown name, an out-of-range value, a malformed or
  corrupt file. The CLI prints one line and exits with code 2.
* the environment refuses (any :class:`OSError` while writing: permission denied, disk full, a
  folder where a file goes, a read-only file system). The CLI prints one line naming the path
  and the reason and exits with code 1. :func:`describe_os_error` writes that line.
"""

from __future__ import annotations

import errno
import os


class InputError(ValueError):
    """Bad input from a user: unknown name, out-of-bounds value, malformed file, wrong shape."""


class ComputationError(RuntimeError):
    """A computation that cannot go on (e.g. a training loss that became NaN): not a bug and not
    bad input as such; the CLI prints one line and exits with code 1."""


# Plain words for the reasons a write fails most often (the C library's strerror otherwise).
_REASONS = {
    errno.ENOSPC: "disk full (no space left on device)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for this file system or limit",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.EISDIR: "is a folder, a file is needed here",
    errno.ENOTDIR: "a file stands where a folder is needed",
    errno.EEXIST: "already exists",
    errno.ENAMETOOLONG: "name too long",
}


def describe_os_error(exc: OSError) -> str:
    """``"<path>: <reason>"`` for an operating-system error (one line)."""
    reason = _REASONS.get(exc.errno) if exc.errno is not None else None
    if reason is None:
        reason = exc.strerror or (str(exc.args[0]) if exc.args else type(exc).__name__)
    reason = " ".join(str(reason).split())
    if exc.filename is None:
        return reason
    text = f"{os.fsdecode(exc.filename)}: {reason}"
    if exc.filename2 is not None:
        text += f" (with {os.fsdecode(exc.filename2)})"
    return text


class OutputError(OSError):
    """An output that cannot be written (exit code 1), whatever its errno — a missing folder
    under /proc included, which is not a missing *input* (exit code 2)."""


def output_error(exc: OSError, path: str | os.PathLike) -> OSError:
    """``exc`` re-addressed to ``path`` (the file the user asked for, not our temporary one)."""
    if exc.errno is None and _disk_is_full(path):
        # numpy and scipy report a short write as "N requested and M written": the reason is
        # the full disk, not the byte count.
        return OutputError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(path))
    if exc.errno is None:
        return OutputError(errno.EIO, " ".join(str(exc).split()) or type(exc).__name__,
                           os.fspath(path))
    return OutputError(exc.errno, exc.strerror or str(exc), os.fspath(path))


def _disk_is_full(path: str | os.PathLike) -> bool:
    from crbnet.disk_space import FULL_DISK_BYTES, free_disk

    return free_disk(path) < FULL_DISK_BYTES
