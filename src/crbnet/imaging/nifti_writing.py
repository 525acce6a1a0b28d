"""Writing maps as NIfTI with the input's affine and header (float32, no scaling, the time
axis dropped), atomically, and their BIDS-style JSON sidecars."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import nibabel as nib
import numpy as np

from crbnet.files import atomic_path, write_json


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


def spatial_zooms(header: nib.Nifti1Header, n_spatial: int) -> tuple[float, ...]:
    return tuple(float(z) for z in header.get_zooms()[:n_spatial])


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
