"""File helpers shared by every writer: nothing is ever left half-written.

Writers produce a temporary file in the destination folder and rename it into place
(``os.replace`` is atomic on POSIX), so a crash, a full disk or a bad input leaves either the
old file or no file. Folders this module creates and files it renames into place get the
permissions the user's umask gives any new file (temporary files start owner-only).

A write that fails raises :class:`OSError` naming the file the user asked for (not the
temporary one); :func:`check_output_file` and :func:`check_output_folder` find the common
failures (a folder where a file goes, a file where a folder goes, no write permission) before
any work starts. :func:`read_text` reads a text input and turns undecodable bytes into an
:class:`~crbnet.errors.InputError`.

Special outputs (:mod:`crbnet.special_outputs`): a path that exists and is neither a regular
file nor a folder is never replaced. ``/dev/null``, ``/dev/zero``, ``/dev/full``, a terminal,
a named pipe (FIFO) or one of this process's descriptors (``/dev/stdout``) is written through
as a stream, after the complete file was built in a private temporary folder; any other device,
a socket and folders of kernel file systems (``/proc``, ``/sys``, ``/dev``) are refused.
"""

from __future__ import annotations

import contextlib
import errno
import io as _io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any, BinaryIO, Iterator, Sequence

import numpy as np

from crbnet import special_outputs
from crbnet.errors import InputError, output_error


def current_umask() -> int:
    """The process's umask. Read from /proc on Linux; elsewhere set and restored at once (a
    file another thread creates in between would get mode 0666)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0)
    os.umask(mask)
    return mask


def chmod_as_new(path: str | Path, folder: bool = False) -> None:
    """Give ``path`` the mode a plain ``open``/``mkdir`` would have (0666/0777 minus umask):
    ``mkstemp``/``mkdtemp`` create owner-only entries, but results are meant to be shared."""
    os.chmod(path, (0o777 if folder else 0o666) & ~current_umask())


def _nearest_existing(path: Path) -> Path:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def _check_can_create_in(path: Path) -> None:
    """Raise the OSError that creating ``path`` (and missing parents) would raise."""
    base = _nearest_existing(path.parent)
    if not base.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(base))
    if not os.access(base, os.W_OK | os.X_OK):
        code = errno.EROFS if _read_only_fs(base) else errno.EACCES
        raise OSError(code, os.strerror(code), str(base))


def _read_only_fs(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def check_not_full(path: Path) -> None:
    """A disk that is already full (less than 64 kB free) fails now, before any work, as the
    write would at the end."""
    from crbnet.limits import FULL_DISK_BYTES, free_disk

    if free_disk(path) < FULL_DISK_BYTES:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def check_output_file(path: str | Path) -> Path:
    """Check before any work that ``path`` can be written as a file: not an existing folder,
    its parent is (or can be created as) a writable folder. Raises :class:`OSError` naming
    the path and the reason."""
    path = Path(path)
    if special_outputs.stream_for(path) is not None:
        return path
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    special_outputs.check_creatable(path)
    check_not_full(path)
    if path.exists() and not os.access(path.parent, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path.parent))
    _check_can_create_in(path)
    return path


def check_output_folder(path: str | Path) -> Path:
    """Check before any work that ``path`` can be (or already is) a writable folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path))
    special_outputs.check_creatable(path)
    check_not_full(path)
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            code = errno.EROFS if _read_only_fs(path) else errno.EACCES
            raise OSError(code, os.strerror(code), str(path))
        return path
    _check_can_create_in(path)
    return path


def make_folders(path: str | Path) -> list[Path]:
    """``mkdir -p path``; returns the folders it created, outermost first (so a failure later
    can remove exactly those: :func:`remove_created_folders`)."""
    path = Path(path)
    missing = []
    probe = path
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(exc, path) from None
    return missing[::-1]


def remove_created_folders(created: Sequence[Path]) -> None:
    """Remove the folders :func:`make_folders` created, innermost first, if still empty."""
    for folder in reversed(list(created)):
        with contextlib.suppress(OSError):
            folder.rmdir()


def read_text(path: str | Path, what: str = "file") -> str:
    """A UTF-8 text file's content; a missing file or undecodable bytes raise InputError."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise InputError(f"{what} {path} is a folder, not a file") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{what} {path} is not UTF-8 text (byte {exc.start}: "
                         f"{exc.reason})") from None


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``.

    The temporary name keeps the suffix(es) of ``path`` so format-sniffing writers (nibabel,
    numpy) behave the same.
    """
    with atomic_paths([path]) as (tmp,):
        yield tmp


@contextlib.contextmanager
def atomic_paths(paths: Sequence[str | Path]) -> Iterator[list[Path]]:
    """:func:`atomic_path` for several files that appear together or not at all: all are
    renamed into place only after every one was written (folders created for them are removed
    again on failure). An OSError names the destination, not the temporary file. A destination
    that is a stream (``/dev/null``, a FIFO, ``/dev/stdout``) gets a temporary file in a private
    folder, copied into the stream once complete."""
    paths = [Path(p) for p in paths]
    streams = [special_outputs.stream_for(p) for p in paths]
    for path, stream in zip(paths, streams):
        if stream is None:
            check_output_file(path)
    created: list[Path] = []
    tmps: list[Path] = []
    private: list[Path] = []
    done = False
    try:
        for path, stream in zip(paths, streams):
            if stream is None:
                created += make_folders(path.parent)
                tmps.append(_temporary_beside(path))
            else:
                private.append(special_outputs.private_folder(path))
                tmps.append(private[-1] / (path.name or "stream"))
        try:
            yield tmps
        except OSError as exc:
            raise _readdressed(exc, dict(zip(tmps, paths))) from None
        for stream, tmp in zip(streams, tmps):
            if stream is not None:
                stream.open()       # a FIFO without a reader is refused before any rename
        for path, tmp, stream in zip(paths, tmps, streams):
            try:
                if stream is None:
                    os.replace(tmp, path)
                else:
                    stream.copy_from(tmp)
            except OSError as exc:
                raise output_error(exc, path) from None
        done = True
    finally:
        for stream in streams:
            if stream is not None:
                stream.close()
        for tmp in tmps:
            with contextlib.suppress(OSError):
                tmp.unlink()
        for folder in private:
            shutil.rmtree(folder, ignore_errors=True)
        if not done:
            remove_created_folders(created)


class _FailSafeFile(_io.RawIOBase):
    """A binary file whose first failed write (or truncate or flush) raises and is remembered;
    later ones are dropped. HDF5 must flush its caches when a file closes; after a failed write
    (a full disk) that flush fails again, and the library then crashes the process when its
    objects are released. Dropping the writes after the first failure lets it close cleanly;
    the file is a temporary that is deleted anyway."""

    def __init__(self, raw: BinaryIO) -> None:
        super().__init__()
        self.raw, self.error = raw, None

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self.raw.readinto(buffer)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        return self.raw.tell()

    def _guarded(self, action: Any, dropped: Any) -> Any:
        if self.error is not None:
            return dropped
        try:
            return action()
        except OSError as exc:
            self.error = exc
            raise

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        return self._guarded(lambda: self._write_all(view), len(view))

    def _write_all(self, view: memoryview) -> int:
        """Every byte or an OSError: a nearly full disk answers with short writes, which the
        HDF5 library would take for complete ones."""
        done = 0
        while done < len(view):
            written = self.raw.write(view[done:])
            if not written:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            done += written
        return done

    def truncate(self, size: int | None = None) -> int:
        return self._guarded(lambda: self.raw.truncate(size), size or 0)

    def flush(self) -> None:
        self._guarded(self.raw.flush, None)


@contextlib.contextmanager
def hdf5_file(tmp: str | Path) -> Iterator[Any]:
    """A new HDF5 file (``h5py.File``) at ``tmp`` (a temporary from :func:`atomic_path`) that a
    failed write cannot crash: a full disk raises the OSError of the first failed write, once
    the file is closed."""
    import h5py

    with open(tmp, "w+b", buffering=0) as raw:
        guard = _FailSafeFile(raw)
        try:
            with h5py.File(guard, "w") as f:
                yield f
        except Exception:
            if guard.error is not None:
                raise guard.error from None
            raise
        if guard.error is not None:
            raise guard.error


def _temporary_beside(path: Path) -> Path:
    suffix = "".join(path.suffixes)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".tmp-{path.name.split('.')[0]}-",
                                   suffix=suffix)
    except OSError as exc:
        raise output_error(exc, path) from None
    os.close(fd)
    chmod_as_new(tmp)
    return Path(tmp)


def _readdressed(exc: OSError, destinations: dict[Path, Path]) -> OSError:
    """An error while writing our temporary files, told about the file(s) the user named."""
    by_name = {os.fspath(t): p for t, p in destinations.items()}
    if exc.filename is not None and os.fspath(exc.filename) in by_name:
        return output_error(exc, by_name[os.fspath(exc.filename)])
    if exc.filename is None:
        return output_error(exc, " or ".join(str(p) for p in destinations.values()))
    return exc


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files :func:`atomic_path` left in ``folder`` when its process was
    killed mid-write (SIGKILL skips the clean-up). Only for a folder no other process is
    writing to. Returns what was removed."""
    removed = []
    for tmp in Path(folder).glob(".tmp-*"):
        if tmp.is_file():
            tmp.unlink()
            removed.append(tmp)
    return removed


def read_numeric_npy(path: str | Path, what: str = "input") -> np.ndarray:
    """A numeric (bool, integer, real or complex) array from a .npy file, never pickled objects;
    InputError for anything else (missing, unreadable, an .npz archive, strings, records)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} file not found: {path}")
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"{path}: not a readable .npy array ({exc})") from None
    if not isinstance(data, np.ndarray):
        with contextlib.suppress(Exception):
            data.close()
        raise InputError(f"{path}: expected a single .npy array, not an .npz archive")
    if data.dtype.kind not in "biufc":
        raise InputError(f"{path}: expected numbers, found an array of {data.dtype} "
                         f"({data.dtype.kind!r} kind)")
    return data


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    """``obj`` as strict JSON (:func:`json_ready`), atomically: every JSON file crbnet writes
    goes through here."""
    text = json.dumps(json_ready(obj), indent=indent, allow_nan=False)
    write_text(path, text + "\n")


def json_ready(value: Any) -> Any:
    """``value`` as plain JSON values: NaN and ±Inf become None (strict JSON has no NaN);
    numpy scalars, numpy arrays and torch tensors become Python numbers and lists; paths become
    strings; tuples and sets become lists; mapping keys become strings. TypeError for anything
    else that JSON cannot hold."""
    if isinstance(value, Mapping):
        return {_json_key(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_ready(v) for v in value]
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, (np.generic, np.ndarray)) or hasattr(value, "tolist"):
        return json_ready(value.tolist())      # numpy scalars and arrays, torch tensors
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _json_key(key: Any) -> str:
    if isinstance(key, str):
        return key
    plain = json_ready(key)
    return json.dumps(plain) if not isinstance(plain, str) else plain


def write_npy(path: str | Path, array: np.ndarray) -> None:
    write_npys({path: array})


def write_npys(arrays: dict[str | Path, np.ndarray]) -> None:
    """Several .npy files that appear together or not at all."""
    with atomic_paths(list(arrays)) as tmps:
        for tmp, (path, array) in zip(tmps, arrays.items()):
            try:
                with open(tmp, "wb") as fh:
                    np.save(fh, array)
            except OSError as exc:
                raise output_error(exc, path) from None
