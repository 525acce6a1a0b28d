"""Complex time series on a spatial grid, read box by box: the interface every input of
``crbnet apply`` offers (:class:`SignalSource`), the boxes (:func:`iter_blocks`) and an
in-memory array as a source (:class:`ArraySignals`)."""

from __future__ import annotations

import itertools
from typing import Iterator

import nibabel as nib
import numpy as np

from crbnet.errors import InputError
from crbnet.imaging.nifti_writing import SpatialReference

#: Default memory budget of one read block, bytes of complex data (see
#: :mod:`crbnet.imaging.nifti`).
DEFAULT_MAX_BYTES = 1 << 30


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

    def reference(self) -> SpatialReference:
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
