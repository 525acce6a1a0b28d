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

Where each part lives (this module gathers their public names): opening and checking files,
sidecars and masks in :mod:`~crbnet.imaging.nifti_files`; the source interface, the read boxes
and in-memory arrays in :mod:`~crbnet.imaging.signal_sources`; NIfTI inputs in
:mod:`~crbnet.imaging.nifti_signals`; writing maps and sidecars in
:mod:`~crbnet.imaging.nifti_writing`; output folders in :mod:`~crbnet.imaging.output_folders`.
"""

from __future__ import annotations

from crbnet.imaging.nifti_files import (
    READ_ERRORS,
    gzip_data_size,
    is_complex_image,
    load_image,
    read_mask,
    read_sidecar,
    same_grid,
)
from crbnet.imaging.nifti_signals import NiftiSignals
from crbnet.imaging.nifti_writing import (
    SpatialReference,
    sidecar_path,
    spatial_zooms,
    write_image,
    write_sidecar,
)
from crbnet.imaging.output_folders import atomic_directory, check_output_directory
from crbnet.imaging.signal_sources import (
    DEFAULT_MAX_BYTES,
    ArraySignals,
    SignalSource,
    iter_blocks,
)

__all__ = [
    "DEFAULT_MAX_BYTES", "load_image", "is_complex_image", "read_sidecar", "iter_blocks",
    "SignalSource", "ArraySignals", "NiftiSignals", "read_mask",
    "SpatialReference", "write_image", "write_sidecar", "check_output_directory",
    "atomic_directory", "gzip_data_size", "same_grid", "sidecar_path",
    "spatial_zooms", "READ_ERRORS",
]
