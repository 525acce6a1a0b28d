"""Output folders built beside their final place and renamed into place when complete: a run
that fails leaves nothing half-written."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from crbnet.errors import InputError, output_error
from crbnet.files import (
    check_not_full,
    check_output_folder,
    chmod_as_new,
    make_folders,
    remove_created_folders,
)


def check_output_directory(path: str | Path, overwrite: bool = False) -> Path:
    """Refuse an output folder that would clobber something or cannot be written (checked
    before any work)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path))
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise InputError(f"output folder {path} exists and is not empty (use --overwrite to "
                         "replace it)")
    check_not_full(path)
    # The folder is built beside its final place and renamed: its parent must be writable.
    check_output_folder(path.parent if str(path.parent) else Path("."))
    return path


@contextlib.contextmanager
def atomic_directory(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``path``; on success it replaces ``path``.

    On any error (a full disk included) the temporary folder and any parent folders made for
    it are removed and ``path`` is untouched, so a failed run leaves nothing half-written. An
    existing non-empty ``path`` is only replaced with ``overwrite``. The folder gets the
    permissions the user's umask gives a new folder.
    """
    path = check_output_directory(path, overwrite)
    created = make_folders(path.parent)
    try:
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".tmp-{path.name}-"))
    except OSError as exc:
        remove_created_folders(created)
        raise output_error(exc, path) from None
    done = False
    try:
        chmod_as_new(tmp, folder=True)
        try:
            yield tmp
        except OSError as exc:
            raise _as_final(exc, tmp, path) from None
        if path.exists():
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".old-{path.name}-"))
            os.rmdir(old)
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
        done = True
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if not done:
            remove_created_folders(created)


def _as_final(exc: OSError, tmp: Path, final: Path) -> OSError:
    """An error about ``tmp`` or a file in it, told about the same place in ``final``."""
    if exc.filename is None:
        return output_error(exc, final)
    name = os.fspath(exc.filename)
    if name == str(tmp) or name.startswith(str(tmp) + os.sep):
        return output_error(exc, str(final) + name[len(str(tmp)):])
    return exc
