"""MATLAB inputs as a reconstruction hands them over: coefficient images ``x`` + ``mask`` from
.mat v5 and v7.3, a basis stored either way round, real or complex, cut with ``--basis-rank``;
the shipped in-vivo slice (examples/invivo) read as documented; ``apply`` on a .mat volume
giving the same maps as the same data in NIfTI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import scipy.io
import torch

from crbnet import models
from crbnet.cli.app import main
from crbnet.imaging.matlab import MatSignals
from crbnet.matfile import write_v73
from crbnet.stats.projected import ProjectedModel
from crbnet.stats.subspace import load_basis

pytestmark = pytest.mark.usefixtures("one_thread")

SLICE = Path(__file__).resolve().parents[1] / "examples" / "invivo"


def random_images(shape: tuple[int, ...], dtype=np.complex64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)


def orthonormal(T: int, K: int, complex_: bool, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((T, K)) + (1j * rng.standard_normal((T, K)) if complex_ else 0)
    return np.linalg.qr(a)[0]


def one_error_line(capsys) -> str:
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("crbnet:")]
    assert len(lines) == 1, lines
    return lines[0]


# ---- coefficient images: v7.3 and v5 ---------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
def test_v73_and_v5_files_give_identical_images_and_masks(tmp_path, dtype):
    x = random_images((7, 5, 3, 4), dtype)                      # MATLAB order, coefficients last
    mask = np.zeros((7, 5, 3), dtype=bool)
    mask[1:6, 1:4, :] = True
    write_v73(tmp_path / "v73.mat", {"x": x, "mask": mask})
    scipy.io.savemat(tmp_path / "v5.mat", {"x": x, "mask": mask})
    with h5py.File(tmp_path / "v73.mat", "r") as fh:             # stored the way MATLAB stores it
        assert fh["x"].shape == (4, 3, 5, 7) and fh["x"].dtype.names == ("real", "imag")
        assert fh["mask"].attrs["MATLAB_class"] == b"logical"
    assert (tmp_path / "v73.mat").read_bytes()[:19] == b"MATLAB 7.3 MAT-file"
    # A small memory budget makes the v7.3 reader read box by box from the file.
    sources = [MatSignals(tmp_path / "v73.mat"), MatSignals(tmp_path / "v5.mat"),
               MatSignals(tmp_path / "v73.mat", max_bytes=3 * 4 * 16)]
    assert [s.version for s in sources] == ["v7.3", "v5", "v7.3"]
    for s in sources:
        assert s.spatial_shape == (7, 5, 3) and s.n_timepoints == 4
        read = np.zeros(x.shape, dtype=s.dtype)
        blocks = list(s.blocks())
        for block in blocks:
            read[block] = s.read(block)
        assert read.dtype == dtype and np.array_equal(read, x)
        assert np.array_equal(s.mask, mask)
        assert "identity affine" in s.description and np.array_equal(s.affine, np.eye(4))
    assert len(list(sources[2].blocks())) > 1


def test_real_images_and_missing_variables_are_refused(tmp_path, capsys):
    scipy.io.savemat(tmp_path / "real.mat", {"x": np.ones((4, 4, 3))})
    scipy.io.savemat(tmp_path / "other.mat", {"y": random_images((4, 4, 3))})
    scipy.io.savemat(tmp_path / "badmask.mat", {"x": random_images((4, 4, 3)),
                                                "mask": np.ones((4, 5), np.uint8)})
    for name, text in (("real", "real-valued"), ("other", "no variable 'x'"),
                       ("badmask", "mask in")):
        assert main(["apply", "--method", "dictionary", "--model", "t2_decay", "--input",
                     str(tmp_path / f"{name}.mat"), "--out", str(tmp_path / "out")]) == 2
        assert text in one_error_line(capsys)
    assert main(["apply", "--method", "dictionary", "--model", "t2_decay", "--input",
                 str(tmp_path / "other.mat"), "--imag", str(tmp_path / "other.mat"),
                 "--out", str(tmp_path / "out")]) == 2
    assert "--imag cannot be given with it" in one_error_line(capsys)
    assert not (tmp_path / "out").exists()


# ---- the shipped slice -------------------------------------------------------------------------
def test_shipped_slice_reads_as_documented():
    files = {p.name for p in SLICE.iterdir()}
    assert {"LICENSE", "README.md", "basis.mat", "coeffs.mat", "control.mat",
            "make_slice.py"} <= files
    assert "MIT License" in (SLICE / "LICENSE").read_text()
    total = sum((SLICE / n).stat().st_size for n in ("basis.mat", "coeffs.mat", "control.mat"))
    assert total < 4e6
    source = MatSignals(SLICE / "coeffs.mat")
    assert source.version == "v7.3"
    assert source.spatial_shape == (176, 146) and source.n_timepoints == 15
    assert int(source.mask.sum()) == 19213
    x = source.read((slice(None), slice(None)))
    assert x.dtype == np.complex64
    assert np.all(x[~source.mask] == 0)                        # nothing outside the brain
    assert np.all(np.abs(x[source.mask]).sum(-1) > 0)           # every brain voxel has signal
    with h5py.File(SLICE / "basis.mat", "r") as fh:
        stored = fh["U"][()]
    assert stored.shape == (15, 6852) and stored.dtype == np.float32
    u = stored.T.astype(np.float64)
    assert np.abs(u.T @ u - np.eye(15)).max() < 1.5e-6
    basis = load_basis(SLICE / "basis.mat", n_timepoints=6852, rank=15)
    assert basis.shape == (6852, 15) and np.array_equal(basis.numpy().real, u)
    with h5py.File(SLICE / "control.mat", "r") as fh:
        alpha, trf = fh["alpha"][()], fh["TRF"][()]
    assert alpha.shape == trf.shape == (6, 1142)
    assert np.allclose(alpha[:, 0], np.pi) and np.allclose(trf[:, 0], 500e-6)
    assert 100e-6 - 1e-12 <= trf.min() and trf.max() <= 500e-6 + 1e-12


# ---- the basis: either way round, real or complex, cut to K columns ---------------------------
@pytest.mark.parametrize("complex_", [False, True])
def test_transposed_and_complex_bases_read_as_the_plain_one(tmp_path, complex_):
    u = orthonormal(32, 6, complex_)
    np.save(tmp_path / "plain.npy", u)
    scipy.io.savemat(tmp_path / "v5_transposed.mat", {"U": u.T})
    write_v73(tmp_path / "v73.mat", {"U": u.astype(np.complex128 if complex_ else np.float64)})
    write_v73(tmp_path / "v73_transposed.mat", {"U": np.ascontiguousarray(u.T)})
    plain = load_basis(tmp_path / "plain.npy", n_timepoints=32)
    assert np.array_equal(plain.numpy(), u.astype(np.complex128))
    for name in ("v5_transposed.mat", "v73.mat", "v73_transposed.mat"):
        assert torch.equal(load_basis(tmp_path / name, n_timepoints=32), plain), name
        assert torch.equal(load_basis(tmp_path / name), plain), name     # longer side = time
        assert torch.equal(load_basis(tmp_path / name, 32, rank=4), plain[:, :4]), name


def test_wrong_length_basis_is_refused_with_one_line(tmp_path):
    t2 = models.get("t2_decay")
    scipy.io.savemat(tmp_path / "coeffs.mat", {"x": random_images((4, 4, 3))})
    scipy.io.savemat(tmp_path / "basis.mat", {"U": orthonormal(t2.n_timepoints + 1, 3, True)})
    res = subprocess.run([sys.executable, "-m", "crbnet", "apply", "--method", "dictionary",
                          "--model", "t2_decay", "--input", str(tmp_path / "coeffs.mat"),
                          "--basis", str(tmp_path / "basis.mat"), "--out",
                          str(tmp_path / "out")],
                         capture_output=True, text=True, env={**os.environ, "CRBNET_DEBUG": ""})
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        f"crbnet: error: basis {tmp_path / 'basis.mat'} is {t2.n_timepoints + 1} × 3: neither "
        f"side is the sequence's {t2.n_timepoints} time points"]
    assert not (tmp_path / "out").exists()


def test_basis_rank_is_checked_everywhere_it_applies(tmp_path, capsys):
    T = models.get("t2_decay").n_timepoints
    scipy.io.savemat(tmp_path / "basis.mat", {"U": orthonormal(T, 6, True)})
    scipy.io.savemat(tmp_path / "coeffs.mat", {"x": random_images((4, 4, 4))})
    crb = ["crb", "--model", "t2_decay", "--basis", str(tmp_path / "basis.mat"), "--json"]
    assert main(crb + ["--basis-rank", "7"]) == 2
    assert "basis rank 7 asked for" in one_error_line(capsys)
    assert main(crb + ["--basis-rank", "4"]) == 0
    assert json.loads(capsys.readouterr().out)["basis"]["shape"] == [T, 4]
    assert main(["crb", "--model", "t2_decay", "--basis-rank", "4"]) == 2
    assert "--basis-rank needs --basis" in one_error_line(capsys)
    apply = ["apply", "--method", "dictionary", "--model", "t2_decay", "--input",
             str(tmp_path / "coeffs.mat"), "--basis", str(tmp_path / "basis.mat"),
             "--out", str(tmp_path / "out")]
    assert main(apply) == 2                       # 6 basis columns, 4 coefficient images
    assert "give --basis-rank 4" in one_error_line(capsys)
    assert main(apply + ["--basis-rank", "3"]) == 2
    assert "4 points on its last axis" in one_error_line(capsys)
    assert not (tmp_path / "out").exists()


# ---- end to end: .mat coefficients give the maps their NIfTI twin gives ------------------------
def test_apply_on_mat_coefficients_equals_the_same_data_as_nifti(tmp_path, capsys):
    basis_file = tmp_path / "basis.mat"
    assert main(["basis", "--model", "t2_decay", "--k", "4", "--n", "256", "--n-check", "0",
                 "--out", str(basis_file)]) == 0
    t2 = models.get("t2_decay")
    basis = load_basis(basis_file, t2.n_timepoints)
    T2 = torch.linspace(0.03, 0.3, 8 * 6, dtype=torch.float64)[:, None]
    z = ProjectedModel(t2, basis).simulate(T2) * (2 - 1j)
    gen = torch.Generator().manual_seed(3)
    z = z + 0.01 * torch.complex(torch.randn(z.shape, generator=gen, dtype=torch.float64),
                                 torch.randn(z.shape, generator=gen, dtype=torch.float64))
    x = z.numpy().astype(np.complex64).reshape(8, 6, 4)         # MATLAB order: 8 × 6 × 4
    mask = np.ones((8, 6), dtype=bool)
    mask[0, :] = False
    write_v73(tmp_path / "coeffs.mat", {"x": x, "mask": mask})
    nib.save(nib.Nifti1Image(x, np.eye(4)), str(tmp_path / "coeffs.nii.gz"))
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), np.eye(4)), str(tmp_path / "mask.nii.gz"))
    common = ["apply", "--method", "dictionary", "--model", "t2_decay", "--basis",
              str(basis_file)]
    assert main(common + ["--input", str(tmp_path / "coeffs.mat"), "--out",
                          str(tmp_path / "mat")]) == 0
    assert main(common + ["--input", str(tmp_path / "coeffs.nii.gz"), "--mask",
                          str(tmp_path / "mask.nii.gz"), "--out", str(tmp_path / "nii")]) == 0
    summary = json.loads((tmp_path / "mat" / "apply.json").read_text())
    assert "identity affine" in summary["input"] and summary["voxels"]["in_mask"] == 42
    assert summary["voxels"]["mask_source"] == "given"
    for name in ("T2map", "T2map_CRBstd", "M0map", "M0phase", "sigma_residual", "mask"):
        a, b = (nib.load(str(tmp_path / d / f"{name}.nii.gz")) for d in ("mat", "nii"))
        assert np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj)), name
        assert np.array_equal(a.affine, np.eye(4))
    t2map = np.asarray(nib.load(str(tmp_path / "mat" / "T2map.nii.gz")).dataobj)
    truth = T2.numpy().reshape(8, 6)
    assert np.median(np.abs(t2map[mask] / truth[mask] - 1)) < 0.05
    assert np.all(t2map[~mask] == 0) or np.all(np.isnan(t2map[~mask]))
    # --mask (here a .mat file's mask) wins over the mask the input carries.
    smaller = mask.copy()
    smaller[:, :2] = False
    scipy.io.savemat(tmp_path / "smaller.mat", {"mask": smaller})
    assert main(common + ["--input", str(tmp_path / "coeffs.mat"), "--mask",
                          str(tmp_path / "smaller.mat"), "--no-uncertainty", "--out",
                          str(tmp_path / "smaller")]) == 0
    used = np.asarray(nib.load(str(tmp_path / "smaller" / "mask.nii.gz")).dataobj) > 0
    assert np.array_equal(used, smaller)
