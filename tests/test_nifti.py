"""NIfTI reading (input variants, blocks, errors), header carry-over and atomic output folders."""

from __future__ import annotations

import gzip
import math

import nibabel as nib
import numpy as np
import pytest

from crbnet.errors import InputError
from crbnet.imaging.nifti import (
    NiftiSignals,
    SpatialReference,
    atomic_directory,
    iter_blocks,
    read_mask,
    write_image,
)


def oblique_affine() -> np.ndarray:
    """A rotated grid with anisotropic voxels (what a real scan looks like)."""
    angle = math.radians(17)
    rot = np.array([[math.cos(angle), -math.sin(angle), 0],
                    [math.sin(angle), math.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([1.1, 0.9, 2.5])
    affine[:3, 3] = [-40.0, 12.5, 7.0]
    return affine


def complex_series(shape=(5, 4, 3, 6), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


def save(path, data, affine=None, qcode=1, scode=2, sform=None, tr=0.0045):
    affine = oblique_affine() if affine is None else affine
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=qcode)
    img.set_sform(affine if sform is None else sform, code=scode)
    img.header.set_zooms(tuple(np.sqrt((affine[:3, :3] ** 2).sum(0))) + (tr,) * (data.ndim - 3))
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(path))
    return path


@pytest.mark.parametrize("shape,limit", [((7, 5, 3), 1), ((7, 5, 3), 6), ((7, 5, 3), 35),
                                         ((7, 5, 3), 36), ((7, 5, 3), 1000), ((9, 4), 5),
                                         ((13,), 4)])
def test_blocks_cover_the_grid_once_and_respect_the_limit(shape, limit):
    count = np.zeros(shape, dtype=int)
    for block in iter_blocks(shape, limit):
        assert count[block].size <= limit
        count[block] += 1
    assert (count == 1).all()


def test_input_variants_read_the_same_series(tmp_path):
    data = complex_series()
    c = save(tmp_path / "c.nii.gz", data)
    re = save(tmp_path / "re.nii.gz", data.real.copy())
    im = save(tmp_path / "im.nii.gz", data.imag.copy())
    mag = save(tmp_path / "mag.nii", np.abs(data))
    pha = save(tmp_path / "pha.nii", np.angle(data))
    full = tuple(slice(None) for _ in range(3))
    a = NiftiSignals(c).read(full)
    b = NiftiSignals(real=re, imag=im).read(full)
    m = NiftiSignals(magnitude=mag, phase=pha).read(full)
    np.testing.assert_array_equal(a, data)
    np.testing.assert_array_equal(b, data)
    np.testing.assert_allclose(m, data, rtol=0, atol=2e-6 * np.abs(data).max())
    assert NiftiSignals(c).n_timepoints == 6 and NiftiSignals(c).spatial_shape == (5, 4, 3)


@pytest.mark.parametrize("name,max_bytes", [("s.nii", 100), ("s.nii.gz", 100),
                                            ("s.nii.gz", 1 << 20)])
def test_blocks_of_a_file_reassemble_it(tmp_path, name, max_bytes):
    """Uncompressed (memory-mapped), gzip box by box, and gzip read once: same data."""
    data = complex_series((6, 5, 4, 7), seed=1)
    src = NiftiSignals(save(tmp_path / name, data), max_bytes=max_bytes)
    out = np.zeros_like(data)
    n_blocks = 0
    for block in src.blocks():
        out[block] = src.read(block)
        n_blocks += 1
    np.testing.assert_array_equal(out, data)
    if max_bytes == 100:
        assert n_blocks > 1   # a 100-byte budget holds one voxel of 7 complex64 samples


def test_real_input_alone_is_refused(tmp_path):
    path = save(tmp_path / "mag.nii.gz", np.abs(complex_series()))
    with pytest.raises(InputError, match="real-valued"):
        NiftiSignals(path)


def test_pairs_must_match_and_be_complete(tmp_path):
    data = complex_series()
    re = save(tmp_path / "re.nii.gz", data.real.copy())
    short = save(tmp_path / "im.nii.gz", data.imag[..., :5].copy())
    with pytest.raises(InputError, match="differ in shape"):
        NiftiSignals(real=re, imag=short)
    with pytest.raises(InputError, match="together"):
        NiftiSignals(real=re)
    moved = oblique_affine()
    moved[0, 3] += 3.0
    im = save(tmp_path / "im2.nii.gz", data.imag.copy(), affine=moved)
    with pytest.raises(InputError, match="same grid"):
        NiftiSignals(real=re, imag=im)
    with pytest.raises(InputError, match="exactly one"):
        NiftiSignals(tmp_path / "c.nii.gz", real=re, imag=im)


def test_phase_in_scanner_units_is_refused(tmp_path):
    data = complex_series()
    mag = save(tmp_path / "mag.nii.gz", np.abs(data))
    pha = save(tmp_path / "pha.nii.gz", np.angle(data) * 4096 / np.pi)
    src = NiftiSignals(magnitude=mag, phase=pha)
    with pytest.raises(InputError, match="radians"):
        src.read(tuple(slice(None) for _ in range(3)))


def test_unreadable_missing_and_truncated_files(tmp_path):
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(gzip.compress(b"not a nifti file at all" * 20))
    with pytest.raises(InputError, match="cannot read"):
        NiftiSignals(garbage)
    with pytest.raises(InputError, match="not found"):
        NiftiSignals(tmp_path / "missing.nii.gz")
    path = save(tmp_path / "full.nii", complex_series())
    truncated = tmp_path / "truncated.nii"
    truncated.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(InputError, match="truncated"):
        NiftiSignals(truncated)


def test_written_maps_keep_affine_codes_zooms_and_units(tmp_path):
    """qform (code 1) and a different sform (code 2, with shear) survive into a float32 map
    without the time axis; scaling from the source is not inherited."""
    sform = oblique_affine()
    sform[0, 1] += 0.05          # shear: not representable by a qform
    src_path = save(tmp_path / "in.nii.gz", complex_series(), qcode=1, scode=2, sform=sform)
    src = NiftiSignals(src_path)
    values = np.arange(5 * 4 * 3, dtype=np.float64).reshape(5, 4, 3) / 7
    write_image(tmp_path / "map.nii.gz", values, src.reference())
    out = nib.load(str(tmp_path / "map.nii.gz"))
    inp = nib.load(str(src_path))
    assert out.shape == (5, 4, 3)
    assert out.get_data_dtype() == np.float32
    assert int(out.header["qform_code"]) == 1 and int(out.header["sform_code"]) == 2
    np.testing.assert_allclose(out.header.get_qform(), inp.header.get_qform(), atol=1e-5)
    np.testing.assert_allclose(out.header.get_sform(), inp.header.get_sform(), atol=1e-6)
    np.testing.assert_allclose(out.affine, inp.affine, atol=1e-6)
    np.testing.assert_allclose(out.header.get_zooms(), inp.header.get_zooms()[:3], rtol=1e-6)
    assert out.header.get_xyzt_units()[0] == "mm"
    np.testing.assert_allclose(np.asarray(out.dataobj), values, rtol=1e-6)


def test_mask_must_be_on_the_input_grid(tmp_path):
    src = NiftiSignals(save(tmp_path / "in.nii.gz", complex_series()))
    good = save(tmp_path / "mask.nii.gz", (np.arange(60).reshape(5, 4, 3) % 2).astype(np.uint8))
    mask = read_mask(good, src.reference())
    assert mask.dtype == bool and mask.sum() == 30
    wrong = save(tmp_path / "wrong.nii.gz", np.ones((5, 4, 2), dtype=np.uint8))
    with pytest.raises(InputError, match="shape"):
        read_mask(wrong, src.reference())
    moved = oblique_affine()
    moved[1, 3] += 5
    shifted = save(tmp_path / "shifted.nii.gz", np.ones((5, 4, 3), dtype=np.uint8), affine=moved)
    with pytest.raises(InputError, match="grid"):
        read_mask(shifted, src.reference())


def test_atomic_directory_is_all_or_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_directory(out) as tmp:
            (tmp / "a.txt").write_text("partial")
            raise RuntimeError("crash in the middle")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []          # no temporary folder left behind
    with atomic_directory(out) as tmp:
        (tmp / "a.txt").write_text("done")
    assert (out / "a.txt").read_text() == "done"
    with pytest.raises(InputError, match="not empty"):
        with atomic_directory(out):
            pass
    with atomic_directory(out, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_reference_without_header_writes_a_valid_image(tmp_path):
    ref = SpatialReference((4, 3, 1), np.diag([2.0, 2.0, 5.0, 1.0]))
    write_image(tmp_path / "m.nii.gz", np.ones((4, 3, 1)), ref)
    out = nib.load(str(tmp_path / "m.nii.gz"))
    np.testing.assert_allclose(out.affine, ref.affine)
    np.testing.assert_allclose(out.header.get_zooms(), (2.0, 2.0, 5.0))
