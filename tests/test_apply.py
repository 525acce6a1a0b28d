"""``apply``: maps from NIfTI data — noise level, uncertainty calibration, chunking, input
variants, header carry-over, NaN voxels and bad input (exit 2, nothing written)."""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch

from crbnet import models
from crbnet.cli.app import main
from crbnet.errors import InputError
from crbnet.imaging.apply import apply_to_volume
from crbnet.imaging.nifti import ArraySignals, NiftiSignals
from crbnet.imaging.phantom import make_phantom, save_phantom

pytestmark = pytest.mark.usefixtures("one_thread")


class T2LeastSquares:
    """Maximum-likelihood T2 for ``t2_decay`` under white Gaussian noise, written independently
    of crbnet's baselines: with the complex M0 profiled out, maximise ``|fᴴy|² / ‖f‖²`` over
    log T2 (grid, then golden-section refinement)."""

    name = "t2-ls"

    def __init__(self, model, n_grid: int = 300, iterations: int = 24) -> None:
        self.model = model
        self.t = torch.as_tensor(model.sequence.times, dtype=torch.float64)
        lo, hi = model.bounds["T2"]
        self.lo, self.hi = math.log(lo), math.log(hi)
        self.n_grid, self.iterations = n_grid, iterations

    @property
    def parameters(self):
        return self.model.parameters

    def _score(self, y, log_t2):
        f = torch.exp(-self.t / torch.exp(log_t2)[..., None])            # [N, G, T]
        return (f * y[:, None, :]).sum(-1).abs() ** 2 / (f * f).sum(-1)

    def predict(self, signals):
        y = torch.as_tensor(signals).to(torch.complex128)
        grid = torch.linspace(self.lo, self.hi, self.n_grid, dtype=torch.float64)
        best = grid[self._score(y, grid.expand(y.shape[0], -1)).argmax(1)]
        step = (self.hi - self.lo) / (self.n_grid - 1)
        a, b = (best - step).clamp(min=self.lo), (best + step).clamp(max=self.hi)
        g = (math.sqrt(5) - 1) / 2
        for _ in range(self.iterations):   # golden section: the bracket shrinks by 0.618 a step
            c, d = b - g * (b - a), a + g * (b - a)
            score = self._score(y, torch.stack((c, d), 1))
            left = score[:, 0] > score[:, 1]
            a, b = torch.where(left, a, c), torch.where(left, d, b)
        return torch.exp((a + b) / 2)[:, None]


@pytest.fixture(scope="module")
def phantom():
    return make_phantom("t2_decay", (24, 24), snr=100, seed=11)


@pytest.fixture(scope="module")
def estimator(phantom):
    return T2LeastSquares(phantom.model)


@pytest.fixture(scope="module")
def auto_run(phantom, estimator, tmp_path_factory):
    """One run without a mask (automatic mask, noise from the background)."""
    out = tmp_path_factory.mktemp("auto") / "maps"
    return apply_to_volume(estimator, ArraySignals(phantom.signal, phantom.affine), out,
                           progress=False)


def oblique(affine):
    rot = np.array([[0.96, -0.28, 0], [0.28, 0.96, 0], [0, 0, 1.0]])
    out = affine.copy()
    out[:3, :3] = rot @ affine[:3, :3]
    return out


def write(path, data, affine, qcode=1, scode=2):
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=qcode)
    img.set_sform(affine, code=scode)
    zooms = tuple(np.sqrt((affine[:3, :3] ** 2).sum(0)))
    img.header.set_zooms(zooms + (0.01,) * (data.ndim - 3))
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(path))
    return path


def maps_of(out_dir, names):
    return {n: np.asarray(nib.load(str(out_dir / f"{n}.nii.gz")).dataobj) for n in names}


# ---- noise level, mask and uncertainty --------------------------------------------------------

def test_noise_estimates_recover_the_true_sigma(auto_run, phantom):
    noise = auto_run.summary["noise"]
    assert noise["method"] == "background"
    assert noise["sigma"] == pytest.approx(phantom.sigma, rel=0.03)
    assert noise["sigma_residual_median"] == pytest.approx(phantom.sigma, rel=0.05)
    assert noise["sigma_complement"] == pytest.approx(phantom.sigma, rel=0.05)
    per_voxel = auto_run.maps["sigma_residual"][auto_run.mask]
    assert np.median(per_voxel) == pytest.approx(phantom.sigma, rel=0.05)
    assert auto_run.summary["snr"]["mean_abs_m0_over_sigma"] == pytest.approx(100, rel=0.05)


def test_automatic_mask_finds_the_brain(auto_run, phantom):
    assert not np.any(auto_run.mask & ~phantom.mask)          # no noise-only voxel
    assert auto_run.mask.sum() >= 0.99 * phantom.mask.sum()


def test_uncertainty_map_is_calibrated(auto_run, phantom):
    """For an efficient estimator, (estimate − truth) / CRB-std has unit spread."""
    tissue = phantom.mask & (phantom.labels != 1)             # CSF T2 ≫ last echo: skip
    z = (auto_run.maps["T2map"] - phantom.truth["T2"])[tissue] / \
        auto_run.maps["T2map_CRBstd"][tissue]
    assert z.size > 150
    assert 0.8 < z.std() < 1.25
    assert abs(z.mean()) < 0.25
    m0_ratio = auto_run.maps["M0map"][tissue] / np.abs(phantom.m0[tissue])
    assert np.median(m0_ratio) == pytest.approx(1.0, abs=0.01)
    phase_err = np.angle(np.exp(1j * (auto_run.maps["M0phase"] - np.angle(phantom.m0))))[tissue]
    assert np.abs(phase_err).max() < 0.1


def test_given_sigma_scales_the_uncertainty(phantom, estimator, tmp_path, auto_run):
    out = tmp_path / "given"
    res = apply_to_volume(estimator, ArraySignals(phantom.signal, phantom.affine), out,
                          mask=phantom.mask, sigma=2 * phantom.sigma, progress=False,
                          figure=False)
    assert res.summary["noise"]["method"] == "given"
    both = res.mask & auto_run.mask
    ratio = res.maps["T2map_CRBstd"][both] / auto_run.maps["T2map_CRBstd"][both]
    np.testing.assert_allclose(ratio, 2 * phantom.sigma / auto_run.sigma, rtol=1e-6)
    # per-voxel noise: each voxel's CRB std uses its own residual noise level
    voxel = apply_to_volume(estimator, ArraySignals(phantom.signal, phantom.affine),
                            tmp_path / "voxel", mask=phantom.mask, noise="voxel",
                            progress=False, figure=False)
    assert voxel.summary["noise"]["method"] == "voxel"
    m = voxel.mask
    np.testing.assert_allclose(voxel.maps["T2map_CRBstd"][m] / res.maps["T2map_CRBstd"][m],
                               voxel.maps["sigma_residual"][m] / (2 * phantom.sigma), rtol=1e-5)
    residual = apply_to_volume(estimator, ArraySignals(phantom.signal, phantom.affine),
                               tmp_path / "residual", mask=phantom.mask, noise="residual",
                               progress=False, figure=False, uncertainty=False)
    assert residual.summary["noise"]["method"] == "residual"
    assert residual.sigma == pytest.approx(phantom.sigma, rel=0.05)


# ---- chunking, input variants, header -----------------------------------------------------------

def test_chunked_path_gives_the_same_maps(phantom, estimator, tmp_path):
    names = ["T2map", "T2map_CRBstd", "M0map", "M0phase", "sigma_residual", "mask"]
    gz = write(tmp_path / "sig.nii.gz", phantom.signal, phantom.affine)
    raw = write(tmp_path / "sig.nii", phantom.signal, phantom.affine)
    mask = phantom.mask
    one = apply_to_volume(estimator, NiftiSignals(gz), tmp_path / "one", mask=mask,
                          progress=False, figure=False)
    # uncompressed, memory-mapped, read 40 voxels at a time, estimated 16 at a time
    small = 40 * 32 * 8
    chunked = apply_to_volume(estimator, NiftiSignals(raw, max_bytes=small), tmp_path / "chunked",
                              mask=mask, chunk_size=16, max_bytes=small, progress=False,
                              figure=False)
    # gzip read box by box
    slabs = apply_to_volume(estimator, NiftiSignals(gz, max_bytes=24 * 32 * 8),
                            tmp_path / "slabs", mask=mask, chunk_size=17, progress=False,
                            figure=False)
    a = maps_of(tmp_path / "one", names)
    for other in ("chunked", "slabs"):
        b = maps_of(tmp_path / other, names)
        for n in names:
            np.testing.assert_allclose(b[n], a[n], rtol=1e-6, atol=0, err_msg=f"{other} {n}")
    assert one.summary["noise"]["sigma"] == pytest.approx(chunked.summary["noise"]["sigma"])
    assert one.summary["noise"]["sigma"] == pytest.approx(slabs.summary["noise"]["sigma"])


def test_input_variants_give_the_same_maps_with_the_input_header(phantom, tmp_path):
    affine = oblique(phantom.affine)
    sig = phantom.signal
    c = write(tmp_path / "c.nii.gz", sig, affine)
    write(tmp_path / "re.nii.gz", sig.real.copy(), affine)
    write(tmp_path / "im.nii.gz", sig.imag.copy(), affine)
    write(tmp_path / "mag.nii.gz", np.abs(sig), affine)
    write(tmp_path / "ph.nii.gz", np.angle(sig), affine)
    mask = write(tmp_path / "mask.nii.gz", phantom.mask.astype(np.uint8), affine)
    common = ["--method", "nlls", "--model", "t2_decay", "--mask", str(mask),
              "--no-uncertainty"]
    pytest.importorskip("crbnet.estimators")
    runs = {"complex": ["--input", str(c)],
            "real_imag": ["--real", str(tmp_path / "re.nii.gz"),
                          "--imag", str(tmp_path / "im.nii.gz")],
            "mag_phase": ["--magnitude", str(tmp_path / "mag.nii.gz"),
                          "--phase", str(tmp_path / "ph.nii.gz")]}
    for name, args in runs.items():
        assert main(["apply", *common, *args, "--out", str(tmp_path / name)]) == 0
    names = ["T2map", "M0map", "M0phase", "mask"]
    ref = maps_of(tmp_path / "complex", names)
    np.testing.assert_array_equal(maps_of(tmp_path / "real_imag", ["T2map"])["T2map"],
                                  ref["T2map"])
    mp = maps_of(tmp_path / "mag_phase", names)
    for n in names:
        np.testing.assert_allclose(mp[n], ref[n], rtol=1e-4, atol=1e-5, err_msg=n)
    inp = nib.load(str(c))
    for n in ("T2map", "M0phase", "mask"):
        out = nib.load(str(tmp_path / "complex" / f"{n}.nii.gz"))
        assert out.shape == phantom.shape
        np.testing.assert_allclose(out.affine, inp.affine, atol=1e-5)
        assert int(out.header["qform_code"]) == 1 and int(out.header["sform_code"]) == 2
        np.testing.assert_allclose(out.header.get_zooms(), inp.header.get_zooms()[:3], rtol=1e-6)
    side = json.loads((tmp_path / "complex" / "T2map.json").read_text())
    assert side["Units"] == "s" and side["Model"] == "t2_decay" and side["Estimator"] == "nlls"
    assert len(side["SequenceHash"]) == 16


# ---- NaN voxels and bad input -----------------------------------------------------------------

def test_nan_voxels_are_masked_out_and_counted(phantom, estimator, tmp_path):
    signal = phantom.signal.copy()
    brain = np.argwhere(phantom.mask)
    bad = [tuple(brain[i]) for i in (0, 10, 50)]
    signal[bad[0]][3] = np.nan
    signal[bad[1]][:] = np.inf
    signal[bad[2]][31] = complex(0, np.nan)
    res = apply_to_volume(estimator, ArraySignals(signal, phantom.affine), tmp_path / "out",
                          mask=phantom.mask, progress=False, figure=False)
    assert res.summary["voxels"]["nonfinite_input"] == 3
    assert res.summary["voxels"]["estimated"] == phantom.mask.sum() - 3
    for v in bad:
        assert not res.mask[v] and res.maps["T2map"][v] == 0
    assert np.all(np.isfinite(res.maps["T2map"])) and np.all(res.maps["T2map"][res.mask] > 0)
    written = np.asarray(nib.load(str(tmp_path / "out" / "mask.nii.gz")).dataobj)
    np.testing.assert_array_equal(written.astype(bool), res.mask)


def test_wrong_time_length_is_refused_before_any_work(phantom, estimator, tmp_path):
    short = ArraySignals(phantom.signal[..., :31], phantom.affine)
    with pytest.raises(InputError, match="31 time points"):
        apply_to_volume(estimator, short, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def phantom_dir(phantom, tmp_path_factory):
    d = tmp_path_factory.mktemp("ph") / "ph"
    save_phantom(phantom, d)
    return d


def _bad_cases(phantom_dir, tmp):
    sig = nib.load(str(phantom_dir / "signal.nii.gz"))
    data = np.asarray(sig.dataobj)
    short = tmp / "short.nii.gz"
    nib.save(nib.Nifti1Image(data[..., :20], sig.affine), str(short))
    real = tmp / "real.nii.gz"
    nib.save(nib.Nifti1Image(np.abs(data), sig.affine), str(real))
    broken = tmp / "broken.nii.gz"
    broken.write_bytes((phantom_dir / "signal.nii.gz").read_bytes()[:400])
    small_mask = tmp / "mask.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((20, 24, 1), np.uint8), sig.affine), str(small_mask))
    other_times = ",".join(f"{0.012 * (i + 1):g}" for i in range(32))
    base = ["apply", "--method", "nlls", "--model", "t2_decay"]
    good = ["--input", str(phantom_dir / "signal.nii.gz")]
    return {
        "wrong time length": base + ["--input", str(short)],
        "real-valued input": base + ["--input", str(real)],
        "unreadable file": base + ["--input", str(broken)],
        "missing file": base + ["--input", str(tmp / "nope.nii.gz")],
        "mask on another grid": base + good + ["--mask", str(small_mask)],
        "other sequence (sidecar hash)": base + ["--times", other_times] + good,
        "magnitude without phase": base + ["--magnitude", str(real)],
        "missing checkpoint": ["apply", "--checkpoint", str(tmp / "none.pt")] + good,
        "sigma not positive": base + good + ["--sigma", "0"],
    }


def test_bad_input_exits_2_and_writes_nothing(phantom_dir, tmp_path, capsys):
    cases = _bad_cases(phantom_dir, tmp_path)
    parent = tmp_path / "outputs"
    parent.mkdir()
    for what, args in cases.items():
        out = parent / "maps"
        assert main(args + ["--out", str(out)]) == 2, what
        err = capsys.readouterr().err
        assert err.startswith("crbnet: error:") and err.count("\n") == 1, (what, err)
        assert list(parent.iterdir()) == [], what        # no output, no temporary folder


def test_cli_phantom_to_maps(phantom_dir, tmp_path, capsys):
    pytest.importorskip("crbnet.estimators")
    out = tmp_path / "maps"
    assert main(["apply", "--method", "nlls", "--model", "t2_decay", "--input",
                 str(phantom_dir / "signal.nii.gz"), "--mask", str(phantom_dir / "mask.nii.gz"),
                 "--out", str(out)]) == 0
    assert "sigma" in capsys.readouterr().out
    for n in ("T2map", "T2map_CRBstd", "M0map", "M0phase", "sigma_residual", "mask"):
        assert (out / f"{n}.nii.gz").exists() and (out / f"{n}.json").exists()
    assert (out / "maps.png").stat().st_size > 1000
    summary = json.loads((out / "apply.json").read_text())
    assert summary["voxels"]["estimated"] == int(nib.load(str(phantom_dir / "mask.nii.gz"))
                                                 .get_fdata().sum())
    t2 = np.asarray(nib.load(str(out / "T2map.nii.gz")).dataobj)
    truth = np.asarray(nib.load(str(phantom_dir / "truth_T2.nii.gz")).dataobj)
    labels = np.asarray(nib.load(str(phantom_dir / "labels.nii.gz")).dataobj)
    wm = labels == 3
    assert np.median(t2[wm] / truth[wm]) == pytest.approx(1.0, abs=0.02)
    # a second run into the same folder is refused, and allowed with --overwrite
    args = ["apply", "--method", "nlls", "--model", "t2_decay", "--input",
            str(phantom_dir / "signal.nii.gz"), "--mask", str(phantom_dir / "mask.nii.gz"),
            "--no-uncertainty", "--out", str(out)]
    assert main(args) == 2
    assert main(args + ["--overwrite"]) == 0
    assert not (out / "T2map_CRBstd.nii.gz").exists()


def test_estimator_must_match_its_model(phantom, tmp_path):
    class Wrong(T2LeastSquares):
        @property
        def parameters(self):
            return ("T1",)

    with pytest.raises(InputError, match="differ"):
        apply_to_volume(Wrong(models.get("t2_decay")), ArraySignals(phantom.signal),
                        tmp_path / "o", progress=False)


def test_zero_filled_background_is_no_noise_sample(phantom, estimator, tmp_path):
    """Outside a reconstruction's own mask the data are zero-filled (subspace coefficient
    images): those voxels hold no noise, so 'auto' takes σ from the residuals."""
    signal = np.where(phantom.mask[..., None], phantom.signal, 0)
    run = apply_to_volume(estimator, ArraySignals(signal, phantom.affine), tmp_path / "maps",
                          mask=phantom.mask, progress=False)
    noise = run.summary["noise"]
    assert noise["method"] == "residual"
    assert noise["sigma"] == pytest.approx(phantom.sigma, rel=0.05)
