"""NIfTI in and out for parameter mapping: complex time series in, parameter maps out.

Input conventions
    A measurement is a NIfTI-1/2 image whose **last dimension is time** (the model's time points,
    in the order the sequence plays them); the dimensions before it are spatial (1 to 3 of them).
    The complex signal comes in one of three forms:

    * one complex-valued file (NIfTI datatypes complex64 / complex128);
    * a real and an imaginary file (same grid);
    * a magnitude and a phase file (same grid, phase in **radians**, |phase| ≤ π; scanner phase
      images in integer units must be rescaled first, e.g. Siemens: × π / 4096).

    A real-valued file alone is refused (:class:`InputError`): magnitude-only data have Rician,
    not Gaussian, noise and no phase, which the signal models and the CRB do not describe.

Reading in blocks
    :class:`NiftiSignals` never needs the whole series in memory. It reads spatial boxes of at
    most ``max_voxels`` voxels (all time points), the last spatial axis outermost, through
    nibabel's array proxy (``img.dataobj[...]``):

    * uncompressed ``.nii``: the proxy memory-maps the file, so a box costs only its own bytes;
    * ``.nii.gz``: gzip streams cannot seek backwards cheaply, and the time axis is the slowest
      one in the file, so every box needs one decompression pass through the file. If the whole
      series fits in ``max_bytes`` it is therefore read once and kept (one pass); otherwise it is
      read box by box with boxes as large as ``max_bytes`` allows, and a note says so. Convert
      big inputs to ``.nii`` (or install ``indexed_gzip``, which nibabel then uses for fast
      seeking) to avoid the repeated passes.

Output conventions
    Maps are written with the **input's affine and header**: qform and sform with their codes,
    spatial voxel sizes and units, slice information; the data type becomes float32, the
    scaling is removed, and the time axis is dropped. Every file is written atomically (temporary
    name + rename); :func:`atomic_directory` builds a whole output folder beside its final place
    and renames it into place only when complete.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import itertools
import json
import logging
import math
import os
import shutil
import tempfile
import zlib
from pathlib import Path
from typing import Any, Iterator, Mapping

import nibabel as nib
import numpy as np

from crbnet.errors import InputError, output_error
from crbnet.files import (
    atomic_path,
    check_not_full,
    check_output_folder,
    chmod_as_new,
    make_folders,
    read_text,
    remove_created_folders,
    write_json,
)

logger = logging.getLogger(__name__)

#: Default memory budget of one read block, bytes of complex data (see the module docstring).
DEFAULT_MAX_BYTES = 1 << 30

_READ_ERRORS = (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError,
                gzip.BadGzipFile, nib.spatialimages.HeaderDataError,
                nib.spatialimages.HeaderTypeError)


# --------------------------------------------------------------------------------------------
# Loading and checking images


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
    except _READ_ERRORS as exc:
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


def spatial_zooms(header: nib.Nifti1Header, n_spatial: int) -> tuple[float, ...]:
    return tuple(float(z) for z in header.get_zooms()[:n_spatial])


def same_grid(a: nib.Nifti1Image, b: nib.Nifti1Image, n_spatial: int, atol: float = 1e-3) -> bool:
    """Same spatial shape and (to ``atol`` mm) the same voxel-to-world affine."""
    return (a.shape[:n_spatial] == b.shape[:n_spatial]
            and np.allclose(a.affine, b.affine, atol=atol))


def sidecar_path(image_path: str | Path) -> Path:
    """Where an image's BIDS JSON sidecar lives: ``x.nii.gz``, ``x.nii`` (or a MATLAB
    ``x.mat``) → ``x.json``."""
    image_path = Path(image_path)
    name = image_path.name
    for ext in (".nii.gz", ".nii", ".mat"):
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    return image_path.with_name(name + ".json")


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


# --------------------------------------------------------------------------------------------
# Block iteration


def iter_blocks(shape: tuple[int, ...], max_voxels: int) -> Iterator[tuple[slice, ...]]:
    """Cover an array of spatial ``shape`` with boxes of at most ``max_voxels`` voxels.

    Boxes follow the file's storage order (first axis fastest, last axis outermost): whole
    leading axes are kept together as long as they fit, the next axis is cut in runs, and the
    remaining axes are stepped one index at a time.
    """
    if max_voxels < 1:
        raise ValueError("max_voxels must be >= 1")
    ndim = len(shape)
    inner = 1
    split_axis = ndim
    for axis in range(ndim):
        if inner * shape[axis] > max_voxels:
            split_axis = axis
            break
        inner *= shape[axis]
    if split_axis == ndim:
        yield tuple(slice(0, n) for n in shape)
        return
    run = max(1, max_voxels // inner)
    lead = tuple(slice(0, n) for n in shape[:split_axis])
    outer_ranges = [range(n) for n in shape[split_axis + 1:]]
    for outer_rev in itertools.product(*reversed(outer_ranges)):
        outer = tuple(slice(i, i + 1) for i in reversed(outer_rev))
        for start in range(0, shape[split_axis], run):
            yield lead + (slice(start, min(start + run, shape[split_axis])),) + outer


# --------------------------------------------------------------------------------------------
# Signal sources


class SignalSource:
    """Complex time series on a spatial grid, read box by box.

    Attributes:
        spatial_shape: the grid (1–3 axes).
        n_timepoints: length of the last (time) axis.
        affine: 4×4 voxel-to-world matrix (mm).
        header: the NIfTI header the output maps inherit (None for in-memory arrays).
        description: what was read, for reports.
        sidecar: the input's JSON sidecar, if any.
    """

    spatial_shape: tuple[int, ...]
    n_timepoints: int
    affine: np.ndarray
    header: nib.Nifti1Header | None = None
    description: str = ""
    sidecar: dict | None = None
    #: bytes per time point per voxel of the returned complex array
    itemsize: int = 8

    def read(self, block: tuple[slice, ...]) -> np.ndarray:
        """Complex array ``[*block_shape, T]``."""
        raise NotImplementedError

    def block_size(self, max_bytes: int) -> int:
        """Voxels per read box for a memory budget of ``max_bytes``."""
        return max(1, int(max_bytes // max(1, self.n_timepoints * self.itemsize)))

    def blocks(self, max_bytes: int = DEFAULT_MAX_BYTES) -> Iterator[tuple[slice, ...]]:
        return iter_blocks(self.spatial_shape, self.block_size(max_bytes))

    def reference(self) -> "SpatialReference":
        return SpatialReference(self.spatial_shape, self.affine, self.header)


class ArraySignals(SignalSource):
    """An in-memory complex array ``[*spatial, T]`` (e.g. a phantom) as a signal source."""

    def __init__(self, signals: np.ndarray, affine: np.ndarray | None = None,
                 header: nib.Nifti1Header | None = None, description: str = "array",
                 sidecar: dict | None = None) -> None:
        signals = np.asarray(signals)
        if not np.iscomplexobj(signals):
            raise InputError("signals must be complex (real and imaginary part)")
        if signals.ndim < 2 or signals.ndim > 4:
            raise InputError(f"signals must have 1–3 spatial axes and time last, got shape "
                             f"{list(signals.shape)}")
        self._data = signals
        self.spatial_shape = tuple(int(n) for n in signals.shape[:-1])
        self.n_timepoints = int(signals.shape[-1])
        self.affine = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
        self.header = header
        self.description = description
        self.sidecar = sidecar
        self.itemsize = signals.dtype.itemsize

    def read(self, block: tuple[slice, ...]) -> np.ndarray:
        return self._data[block]


class NiftiSignals(SignalSource):
    """Complex time series from NIfTI files: complex, real + imaginary, or magnitude + phase.

    Args:
        path: one complex-valued file.
        real, imag: a real and an imaginary file (same grid).
        magnitude, phase: a magnitude file and a phase file in radians (same grid).
        max_bytes: memory budget of one read box (bytes of complex data). A ``.nii.gz`` series
            that fits in it is read once and kept.
    """

    def __init__(self, path: str | Path | None = None, *, real: str | Path | None = None,
                 imag: str | Path | None = None, magnitude: str | Path | None = None,
                 phase: str | Path | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        given = {"input": path is not None, "real/imag": real is not None or imag is not None,
                 "magnitude/phase": magnitude is not None or phase is not None}
        if sum(given.values()) != 1:
            raise InputError("give exactly one of: a complex input file, a --real/--imag pair, "
                             "or a --magnitude/--phase pair")
        self.max_bytes = int(max_bytes)
        self._cache: np.ndarray | None = None
        if path is not None:
            img = load_image(path, "input")
            if not is_complex_image(img):
                raise InputError(
                    f"input {path} is real-valued ({img.get_data_dtype()}); complex data are "
                    "needed: give a complex NIfTI, or --real/--imag, or --magnitude/--phase "
                    "(phase in radians)")
            self.kind = "complex"
            self._images = (img,)
            self.paths = (Path(path),)
        else:
            first, second = (real, imag) if given["real/imag"] else (magnitude, phase)
            names = ("real", "imaginary") if given["real/imag"] else ("magnitude", "phase")
            if first is None or second is None:
                flag = "--real and --imag" if given["real/imag"] else "--magnitude and --phase"
                raise InputError(f"{flag} must be given together")
            imgs = (load_image(first, names[0]), load_image(second, names[1]))
            for img, name, p in zip(imgs, names, (first, second)):
                if is_complex_image(img):
                    raise InputError(f"the {name} file {p} is complex-valued; give it alone as "
                                     "the input instead")
            self.kind = "real_imag" if given["real/imag"] else "magnitude_phase"
            self._images = imgs
            self.paths = (Path(first), Path(second))
        ref = self._images[0]
        shape = tuple(int(n) for n in ref.shape)
        if len(shape) < 2 or len(shape) > 4:
            raise InputError(f"{self.paths[0]}: expected 1–3 spatial axes and time as the last "
                             f"axis, got shape {list(shape)}")
        if len(self._images) == 2:
            other = self._images[1]
            if tuple(other.shape) != shape:
                raise InputError(f"{self.paths[0]} and {self.paths[1]} differ in shape: "
                                 f"{list(shape)} vs {list(other.shape)}")
            if not same_grid(ref, other, len(shape) - 1):
                raise InputError(f"{self.paths[0]} and {self.paths[1]} are not on the same grid "
                                 "(their affines differ)")
        self.spatial_shape = shape[:-1]
        self.n_timepoints = shape[-1]
        self.affine = np.asarray(ref.affine, dtype=np.float64)
        self.header = ref.header
        double = any(np.dtype(img.get_data_dtype()).itemsize >= (16 if is_complex_image(img) else 8)
                     for img in self._images)
        self.dtype = np.dtype(np.complex128 if double else np.complex64)
        self.itemsize = self.dtype.itemsize
        self.description = f"{self.kind}: " + ", ".join(str(p) for p in self.paths)
        self.sidecar = read_sidecar(self.paths[0])
        self._compressed = any(p.name.endswith(".gz") for p in self.paths)
        total = int(np.prod(shape, dtype=np.int64)) * self.itemsize
        self._keep_all = self._compressed and total <= self.max_bytes
        self._noted = False

    # -- reading ----------------------------------------------------------------------------
    def _read_raw(self, img: nib.Nifti1Image, index: tuple[slice, ...], path: Path) -> np.ndarray:
        try:
            return np.asarray(img.dataobj[index])
        except _READ_ERRORS as exc:
            raise InputError(f"cannot read data from {path}: {exc}") from None

    def _combine(self, parts: list[np.ndarray]) -> np.ndarray:
        if self.kind == "complex":
            return parts[0].astype(self.dtype, copy=False)
        rdtype = np.float64 if self.dtype == np.complex128 else np.float32
        a, b = (p.astype(rdtype, copy=False) for p in parts)
        if self.kind == "real_imag":
            out = np.empty(a.shape, dtype=self.dtype)
            out.real, out.imag = a, b
            return out
        finite = np.isfinite(b)
        if np.any(np.abs(b[finite]) > math.pi * (1 + 1e-4)):
            raise InputError(
                f"phase file {self.paths[1]} has values up to {np.abs(b[finite]).max():.4g}; "
                "phase must be in radians (|phase| ≤ π) — rescale it first (e.g. Siemens "
                "phase images: × π/4096)")
        if np.any(a[np.isfinite(a)] < 0):
            raise InputError(f"magnitude file {self.paths[0]} has negative values")
        return (a * np.exp(1j * b)).astype(self.dtype, copy=False)

    def _read_uncached(self, index: tuple[slice, ...]) -> np.ndarray:
        parts = [self._read_raw(img, index, p) for img, p in zip(self._images, self.paths)]
        return self._combine(parts)

    def read(self, block: tuple[slice, ...]) -> np.ndarray:
        index = tuple(block) + (slice(None),)
        if self._keep_all:
            if self._cache is None:
                self._cache = self._read_uncached(tuple(slice(None) for _ in self.spatial_shape)
                                                  + (slice(None),))
            return self._cache[index]
        if self._compressed and not self._noted:
            self._noted = True
            logger.info("%s is gzip-compressed and larger than the memory budget (%.0f MiB); "
                        "every read block costs one decompression pass. Uncompressed .nii "
                        "input is much faster.", self.paths[0].name, self.max_bytes / 2**20)
        return self._read_uncached(index)

    def blocks(self, max_bytes: int | None = None) -> Iterator[tuple[slice, ...]]:
        budget = self.max_bytes if max_bytes is None else max_bytes
        if self._keep_all:
            # Everything is in memory after the first read: one box of the whole grid.
            return iter_blocks(self.spatial_shape, int(np.prod(self.spatial_shape)))
        return iter_blocks(self.spatial_shape, self.block_size(budget))


def read_mask(path: str | Path, reference: "SpatialReference") -> np.ndarray:
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
    except _READ_ERRORS as exc:
        raise InputError(f"cannot read data from mask {path}: {exc}") from None
    return np.isfinite(data) & (data != 0)


# --------------------------------------------------------------------------------------------
# Writing


class SpatialReference:
    """Grid, affine and header that written maps inherit."""

    def __init__(self, shape: tuple[int, ...], affine: np.ndarray,
                 header: nib.Nifti1Header | None = None) -> None:
        self.shape = tuple(int(n) for n in shape)
        self.affine = np.asarray(affine, dtype=np.float64)
        self.header = header

    def make_header(self, dtype: Any, data_shape: tuple[int, ...], description: str = "",
                    extra_zooms: tuple[float, ...] = ()) -> nib.Nifti1Header:
        """A header for data of ``data_shape`` (the grid, optionally with trailing axes such as
        time): the source header with its affine, codes and spatial zooms, without scaling."""
        src = self.header
        hdr = nib.Nifti1Header() if src is None else nib.Nifti1Header.from_header(src)
        hdr.set_data_dtype(dtype)
        hdr.set_data_shape(tuple(int(n) for n in data_shape))
        n_spatial = min(len(self.shape), len(data_shape))
        if src is not None:
            zooms = list(spatial_zooms(src, n_spatial))
        else:
            zooms = [float(z) for z in np.sqrt((self.affine[:3, :3] ** 2).sum(0))[:n_spatial]]
        zooms += list(extra_zooms)[: len(data_shape) - n_spatial]
        zooms += [1.0] * (len(data_shape) - len(zooms))
        hdr.set_zooms(zooms)
        if src is not None:
            hdr.set_qform(src.get_qform(), code=int(src["qform_code"]))
            hdr.set_sform(src.get_sform(), code=int(src["sform_code"]))
            hdr.set_xyzt_units(xyz=src.get_xyzt_units()[0],
                               t=src.get_xyzt_units()[1] if extra_zooms else None)
        else:
            hdr.set_qform(self.affine, code=1)
            hdr.set_sform(self.affine, code=1)
            hdr.set_xyzt_units(xyz="mm", t="sec" if extra_zooms else None)
        hdr.set_slope_inter(None, None)
        hdr["cal_min"] = 0
        hdr["cal_max"] = 0
        hdr["intent_code"] = 0
        hdr["intent_name"] = b""
        hdr["descrip"] = description.encode()[:79]
        return hdr


def write_image(path: str | Path, data: np.ndarray, reference: SpatialReference,
                dtype: Any = np.float32, description: str = "",
                extra_zooms: tuple[float, ...] = ()) -> None:
    """Write ``data`` atomically with the reference's affine and header.

    ``data`` has the reference's grid shape, optionally followed by more axes (e.g. time, whose
    voxel size goes in ``extra_zooms``).
    """
    data = np.asarray(data)
    dtype = np.dtype(dtype)
    if tuple(data.shape[:len(reference.shape)]) != reference.shape:
        raise ValueError(f"data shape {data.shape} does not start with the grid {reference.shape}")
    hdr = reference.make_header(dtype, data.shape, description, extra_zooms)
    affine = hdr.get_best_affine()
    img = nib.Nifti1Image(data.astype(dtype, copy=False), affine, header=hdr)
    # Nifti1Image(...) rewrites qform/sform from ``affine``; restore the source's exactly.
    img.set_qform(hdr.get_qform(), code=int(hdr["qform_code"]))
    img.set_sform(hdr.get_sform(), code=int(hdr["sform_code"]))
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))


def write_sidecar(image_path: str | Path, metadata: Mapping[str, Any]) -> Path:
    """BIDS-style JSON sidecar beside ``image_path`` (``x.nii.gz`` → ``x.json``)."""
    side = sidecar_path(image_path)
    write_json(side, dict(metadata))
    return side


# --------------------------------------------------------------------------------------------
# Output folders


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


__all__ = [
    "DEFAULT_MAX_BYTES", "load_image", "is_complex_image", "read_sidecar", "iter_blocks",
    "SignalSource", "ArraySignals", "NiftiSignals", "read_mask",
    "SpatialReference", "write_image", "write_sidecar", "check_output_directory",
    "atomic_directory",
]
