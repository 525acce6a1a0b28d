"""MATLAB coefficient (or time-series) images in: ``x`` and an optional ``mask`` from a .mat file.

What a low-rank (subspace) reconstruction in MATLAB hands over is a .mat file with the complex
images ``x`` and often a brain ``mask``. :class:`MatSignals` reads it as a signal source for
:func:`crbnet.imaging.apply.apply_to_volume`:

* ``x``: complex, 2 to 4 axes **in MATLAB's order**, the last one the K subspace coefficients
  (or the T time points), the others spatial — e.g. ``176 × 146 × 15`` for 15 coefficient images
  of one slice. A v7.3 file (HDF5) shows the same array with its axes reversed in h5py
  (``(15, 146, 176)``); both versions are read to the same array (:mod:`crbnet.matfile`).
  Real-valued ``x`` is refused, as real-valued NIfTI input is: the noise model needs both parts.
* ``mask`` (optional): the spatial grid of ``x`` (trailing singleton axes allowed), non-zero and
  finite = estimate. ``crbnet apply`` uses it unless ``--mask`` is given.

A .mat file has no geometry: the maps are written on an identity affine (1 mm voxels, the array
axes as x, y, z), and the source's description, which every sidecar and ``apply.json`` carry,
says so. A JSON sidecar beside the file (``coeffs.mat`` → ``coeffs.json``) is read like a NIfTI
input's (``Basis.hash``, ``SequenceHash``).

A v7.3 ``x`` is read box by box (h5py reads only the chunks a box touches) unless it fits in the
memory budget, in which case it is read once; a v5 file is loaded whole by scipy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from crbnet.errors import InputError
from crbnet.imaging.nifti import DEFAULT_MAX_BYTES, SignalSource, iter_blocks, read_sidecar
from crbnet.matfile import MatVariable, variables

#: The variable names read: the images and the mask.
IMAGES_VARIABLE = "x"
MASK_VARIABLE = "mask"
#: What the sidecars say about the geometry of maps made from a .mat file.
GEOMETRY_NOTE = "no geometry in a .mat file: maps on an identity affine (1 mm voxels)"


def is_mat_file(path: str | Path | None) -> bool:
    """True for a name ending in ``.mat`` (the input is then read as MATLAB)."""
    return path is not None and str(path).lower().endswith(".mat")


class MatSignals(SignalSource):
    """Complex images ``x`` (last axis = coefficients or time, MATLAB's axis order) and the
    optional ``mask`` of a MATLAB .mat file, v5 or v7.3.

    Args:
        path: the .mat file.
        max_bytes: memory budget of one read box (bytes of complex data); an ``x`` that fits in
            it is read once and kept.

    Attributes (beside :class:`~crbnet.imaging.nifti.SignalSource`'s):
        mask: bool array of the spatial grid from the file's ``mask`` variable, or None.
        version: ``"v7.3"`` or ``"v5"``.
    """

    def __init__(self, path: str | Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.path = Path(path)
        found = variables(self.path, "input")
        if IMAGES_VARIABLE not in found:
            raise InputError(f"input {self.path} has no variable {IMAGES_VARIABLE!r} (it holds "
                             f"{', '.join(sorted(found)) or 'no numeric arrays'}); crbnet reads "
                             f"the complex images from {IMAGES_VARIABLE!r}")
        self._x = found[IMAGES_VARIABLE]
        shape = self._x.shape
        if not np.issubdtype(self._x.dtype, np.complexfloating):
            raise InputError(f"{IMAGES_VARIABLE} in {self.path} is real-valued "
                             f"({self._x.dtype}); complex images are needed")
        if not 2 <= len(shape) <= 4:
            raise InputError(f"{IMAGES_VARIABLE} in {self.path} has shape {list(shape)}: "
                             "expected 1–3 spatial axes and the coefficients (or time) last")
        self.version = self._x.version
        self.spatial_shape = tuple(shape[:-1])
        self.n_timepoints = int(shape[-1])
        self.affine = np.eye(4)
        self.header = None
        self.dtype = np.dtype(np.complex64 if self._x.dtype == np.complex64 else np.complex128)
        self.itemsize = self.dtype.itemsize
        self.description = (f"MATLAB {self.version}: {self.path}, {IMAGES_VARIABLE} "
                            f"{'x'.join(str(n) for n in shape)}; {GEOMETRY_NOTE}")
        self.sidecar = read_sidecar(self.path)
        self.mask = _mask_of(found.get(MASK_VARIABLE), self.spatial_shape, self.path)
        total = int(np.prod(shape, dtype=np.int64)) * self.itemsize
        self.max_bytes = int(max_bytes)
        self._keep_all = self.version == "v5" or total <= self.max_bytes
        self._cache: np.ndarray | None = None

    def read(self, block: tuple[slice, ...]) -> np.ndarray:
        index = tuple(block) + (slice(None),)
        if self._keep_all:
            if self._cache is None:
                self._cache = self._x.read().astype(self.dtype, copy=False)
            return self._cache[index]
        return self._x.read(index).astype(self.dtype, copy=False)

    def blocks(self, max_bytes: int | None = None) -> Iterator[tuple[slice, ...]]:
        if self._keep_all:             # all in memory after the first read: one box
            return iter_blocks(self.spatial_shape, int(np.prod(self.spatial_shape)))
        budget = self.max_bytes if max_bytes is None else max_bytes
        return iter_blocks(self.spatial_shape, self.block_size(budget))


def _mask_of(variable: MatVariable | None, shape: tuple[int, ...],
             path: Path) -> np.ndarray | None:
    """A mask variable as a bool array of ``shape`` (non-zero and finite = in)."""
    if variable is None:
        return None
    found = variable.shape
    squeezed = found
    while len(squeezed) > len(shape) and squeezed[-1] == 1:
        squeezed = squeezed[:-1]
    if squeezed != tuple(shape):
        raise InputError(f"{MASK_VARIABLE} in {path} has shape {list(found)}, the images' grid "
                         f"is {list(shape)}")
    data = variable.read().reshape(shape)
    return np.isfinite(data) & (data != 0)


def read_mat_mask(path: str | Path, shape: tuple[int, ...]) -> np.ndarray:
    """The ``mask`` variable of a .mat file (``--mask FILE.mat``) on a grid of ``shape``."""
    found = variables(path, "mask file")
    if MASK_VARIABLE not in found:
        raise InputError(f"mask file {path} has no variable {MASK_VARIABLE!r} (it holds "
                         f"{', '.join(sorted(found)) or 'no numeric arrays'})")
    return _mask_of(found[MASK_VARIABLE], shape, Path(path))


__all__ = ["MatSignals", "read_mat_mask", "is_mat_file", "IMAGES_VARIABLE", "MASK_VARIABLE",
           "GEOMETRY_NOTE"]
