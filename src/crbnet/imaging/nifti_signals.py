"""Complex time series from NIfTI files (complex, real + imaginary, or magnitude + phase),
read in boxes; a ``.nii.gz`` series that fits the memory budget is read once and kept (see
:mod:`crbnet.imaging.nifti` for the conventions)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Iterator

import nibabel as nib
import numpy as np

from crbnet.errors import InputError
from crbnet.imaging.nifti_files import (
    READ_ERRORS,
    is_complex_image,
    load_image,
    read_sidecar,
    same_grid,
)
from crbnet.imaging.signal_sources import DEFAULT_MAX_BYTES, SignalSource, iter_blocks

logger = logging.getLogger(__name__)


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
        except READ_ERRORS as exc:
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
