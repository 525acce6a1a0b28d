"""Reading NIfTI files safely: open lazily with one-line errors for unreadable, truncated or
corrupt files, the BIDS JSON sidecar beside an image, and mask files on an input's grid."""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import zlib
from pathlib import Path
from typing import Iterator

import nibabel as nib
import numpy as np

from crbnet.errors import InputError
from crbnet.files import read_text
from crbnet.imaging.nifti_writing import SpatialReference, sidecar_path

#: What nibabel and gzip raise for a file that cannot be read as NIfTI.
READ_ERRORS = (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError,
               gzip.BadGzipFile, nib.spatialimages.HeaderDataError,
               nib.spatialimages.HeaderTypeError)


def load_image(path: str | Path, what: str = "input") -> nib.Nifti1Image:
    """Open a NIfTI-1/2 file lazily (header now, data on access); clear errors otherwise."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} file not found: {path}")
    if not path.is_file():
        raise InputError(f"{what} is not a file: {path}")
    try:
        with _quiet_nibabel():
            img = nib.load(str(path), keep_file_open=True)
            # A header nibabel cannot make sense of (dim[0] outside 1..7 reads as the other
            # byte order) fails here, not halfway through the work.
            img.header.get_data_shape(), img.get_data_dtype()
    except READ_ERRORS as exc:
        raise InputError(f"cannot read {what} {path} as NIfTI: {exc}") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(f"{what} {path} is a {type(img).__name__}, not a NIfTI image")
    _check_file_size(img, path, what)
    return img


@contextlib.contextmanager
def _quiet_nibabel() -> Iterator[None]:
    """nibabel reports header repairs on its own stderr handler ("sizeof_hdr should be 348");
    a bad header becomes one InputError line instead."""
    log = nib.imageglobals.logger
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


def _check_file_size(img: nib.Nifti1Image, path: Path, what: str) -> None:
    """A truncated or corrupt file is caught now, not halfway through the processing (or never:
    a reader that stops before the end of a gzip stream never sees its checksum)."""
    hdr = img.header
    offset = int(getattr(img.dataobj, "offset", hdr.get_data_offset()))
    needed = offset + int(np.prod(hdr.get_data_shape(), dtype=np.int64)) * \
        hdr.get_data_dtype().itemsize
    size = gzip_data_size(path, what) if path.name.endswith(".gz") else path.stat().st_size
    if size < needed:
        raise InputError(f"{what} {path} is truncated: {size} bytes, the header "
                         f"announces {needed}")


def gzip_data_size(path: str | Path, what: str = "input") -> int:
    """Decompress a whole gzip file, checking every member's CRC-32 and length; returns the
    decompressed size in bytes. Corruption raises InputError. Costs one decompression pass."""
    size = 0
    try:
        with gzip.open(path, "rb") as fh:
            while chunk := fh.read(1 << 24):
                size += len(chunk)
    except (OSError, EOFError, zlib.error) as exc:
        if isinstance(exc, OSError) and not isinstance(exc, gzip.BadGzipFile) and \
                exc.errno is not None:
            raise
        raise InputError(f"{what} {path} is corrupt (gzip stream: {exc}); nothing was "
                         "estimated from it") from None
    return size


def is_complex_image(img: nib.Nifti1Image) -> bool:
    return np.issubdtype(img.get_data_dtype(), np.complexfloating)


def same_grid(a: nib.Nifti1Image, b: nib.Nifti1Image, n_spatial: int, atol: float = 1e-3) -> bool:
    """Same spatial shape and (to ``atol`` mm) the same voxel-to-world affine."""
    return (a.shape[:n_spatial] == b.shape[:n_spatial]
            and np.allclose(a.affine, b.affine, atol=atol))


def read_sidecar(path: str | Path) -> dict | None:
    """The BIDS JSON sidecar of an image (``x.nii.gz`` → ``x.json``), if present and valid."""
    side = sidecar_path(path)
    if not side.is_file():
        return None
    try:
        data = json.loads(read_text(side, "JSON sidecar"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read the JSON sidecar {side}: {exc}") from None
    return data if isinstance(data, dict) else None


def read_mask(path: str | Path, reference: SpatialReference) -> np.ndarray:
    """A mask file (non-zero = in) on the grid of ``reference``; bool array of its shape."""
    img = load_image(path, "mask")
    shape = tuple(int(n) for n in img.shape)
    while len(shape) > len(reference.shape) and shape[-1] == 1:
        shape = shape[:-1]
    if shape != tuple(reference.shape):
        raise InputError(f"mask {path} has shape {list(img.shape)}, the input grid is "
                         f"{list(reference.shape)}")
    if not np.allclose(img.affine, reference.affine, atol=1e-3):
        raise InputError(f"mask {path} is not on the input's grid (their affines differ)")
    try:
        data = np.asarray(img.dataobj).reshape(shape)
    except READ_ERRORS as exc:
        raise InputError(f"cannot read data from mask {path}: {exc}") from None
    return np.isfinite(data) & (data != 0)
