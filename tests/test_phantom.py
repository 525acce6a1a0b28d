"""The digital phantom: geometry, documented tissue values inside the bounds, M0, B1, noise."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from crbnet import models
from crbnet.cli.app import main
from crbnet.errors import InputError
from crbnet.imaging.phantom import LABELS, make_phantom, save_phantom
from crbnet.physics.sequences import sequence_hash
from crbnet.physics.tissues import PROTON_DENSITY, tissue_table
from crbnet.reporting.phantom import truth_figure

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {"t2_decay": (24, 24), "ir_t1": (16, 16, 4), "fisp_mrf": (16, 16),
         "mt_hybrid_state": (16, 16)}


@pytest.fixture(scope="module")
def phantoms():
    return {name: make_phantom(name, shape, snr=40, seed=7) for name, shape in SMALL.items()}


@pytest.mark.parametrize("name", list(SMALL))
def test_truth_inside_bounds_and_as_documented(phantoms, name):
    ph = phantoms[name]
    model = ph.model
    assert set(ph.truth) == set(model.parameters)
    table = tissue_table(name, 3.0)
    for tissue, mask in ph.tissue_masks().items():
        for p in model.parameters:
            values = ph.truth[p][mask]
            lo, hi = model.bounds[p]
            assert values.min() >= lo and values.max() <= hi, (p, tissue)
            nominal = table[tissue][p][0]
            # smooth within-tissue variation of at most ±5 % around the documented value
            assert np.all(np.abs(values - nominal) <= 0.05 * abs(nominal) + 1e-15), (p, tissue)
            # ... and the table names a source for every value
            assert table[tissue][p][1]
    for p in model.parameters:
        assert np.all(ph.truth[p][~ph.mask] == 0)


@pytest.mark.parametrize("name", list(SMALL))
def test_geometry_has_every_tissue(phantoms, name):
    ph = phantoms[name]
    present = set(np.unique(ph.labels).tolist())
    assert present == set(LABELS)                      # background, CSF, GM, WM and lesions
    np.testing.assert_array_equal(ph.mask, ph.labels > 0)
    counts = {t: int(m.sum()) for t, m in ph.tissue_masks().items()}
    assert counts["WM"] > counts["lesion"] > 0 and counts["GM"] > 0 and counts["CSF"] > 0
    assert 0.2 < ph.mask.mean() < 0.8                  # a background exists for noise estimation


def test_signal_is_m0_times_the_model_of_the_truth():
    """With negligible noise, every brain voxel is M0·f(θ) and the background is empty."""
    ph = make_phantom("fisp_mrf", (12, 12), snr=1e9, seed=3)
    theta = torch.from_numpy(np.stack([ph.truth[p][ph.mask] for p in ph.model.parameters], 1))
    expected = ph.m0[ph.mask][:, None] * ph.model.simulate(theta).numpy()
    got = ph.signal[ph.mask]
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()
    assert np.abs(ph.signal[~ph.mask]).max() <= 1e-5 * np.abs(expected).max()
    assert np.abs(ph.m0[~ph.mask]).max() == 0


def test_m0_is_proton_density_with_smooth_coil_and_phase(phantoms):
    ph = phantoms["t2_decay"]
    mag = np.abs(ph.m0) / ph.m0_scale
    for tissue, mask in ph.tissue_masks().items():
        ratio = mag[mask] / PROTON_DENSITY[tissue]     # the receive profile, 0.8–1.3
        assert 0.75 < ratio.min() and ratio.max() < 1.35
    phase = np.angle(ph.m0[..., 0])
    # smooth: neighbouring brain voxels differ by far less than a wrap
    inside = ph.mask[..., 0]
    step = np.abs(np.angle(np.exp(1j * np.diff(phase, axis=0))))[inside[1:] & inside[:-1]]
    assert step.max() < 0.5 and np.ptp(phase[inside]) > 1.0


def test_noise_level_follows_the_snr_definition(phantoms):
    ph = phantoms["t2_decay"]
    assert ph.sigma == pytest.approx(np.abs(ph.m0[ph.mask]).mean() / ph.snr, rel=1e-12)
    background = ph.signal[~ph.mask]                    # noise only
    assert background.real.std() == pytest.approx(ph.sigma, rel=0.03)
    assert background.imag.std() == pytest.approx(ph.sigma, rel=0.03)
    assert abs(background.mean()) < 0.05 * ph.sigma


def test_b1_is_simulated_only_when_estimated():
    free = models.get("fisp_mrf", fixed={})
    ph = make_phantom(free, (16, 16), snr=1e9, seed=2)
    assert "B1" in ph.truth
    b1 = ph.truth["B1"][ph.mask]
    assert 0.75 <= b1.min() and b1.max() <= 1.25 and np.ptp(b1) > 0.1
    # the signal used the B1 map: simulating with B1 = 1 instead does not reproduce it
    fixed_model = models.get("fisp_mrf")
    theta = torch.from_numpy(np.stack([ph.truth[p][ph.mask] for p in ("T1", "T2")], 1))
    wrong = ph.m0[ph.mask][:, None] * fixed_model.simulate(theta).numpy()
    assert np.abs(ph.signal[ph.mask] - wrong).max() > 1e-2 * np.abs(wrong).max()
    default = make_phantom("fisp_mrf", (16, 16), snr=1e9, seed=2)
    assert "B1" not in default.truth and np.all(default.b1 == 1.0)


def test_seed_makes_it_reproducible():
    a = make_phantom("t2_decay", (16, 16), snr=20, seed=5)
    b = make_phantom("t2_decay", (16, 16), snr=20, seed=5)
    c = make_phantom("t2_decay", (16, 16), snr=20, seed=6)
    np.testing.assert_array_equal(a.signal, b.signal)
    assert not np.array_equal(a.signal, c.signal)
    assert not np.array_equal(a.truth["T2"], c.truth["T2"])


def test_field_strength_tables():
    wm3 = tissue_table("fisp_mrf", 3.0)["WM"]["T1"][0]
    wm15 = tissue_table("fisp_mrf", 1.5)["WM"]["T1"][0]
    assert wm15 < wm3                          # T1 lengthens with field strength
    with pytest.raises(InputError, match="1.5 T"):
        make_phantom("mt_hybrid_state", (8, 8), snr=10, seed=0, field_strength=1.5)


def test_save_writes_nifti_and_json(phantoms, tmp_path):
    ph = phantoms["fisp_mrf"]
    paths = save_phantom(ph, tmp_path / "ph", figures=truth_figure)
    names = {p.name for p in paths}
    assert {"signal.nii.gz", "signal.json", "mask.nii.gz", "labels.nii.gz", "truth_T1.nii.gz",
            "truth_T2.nii.gz", "truth_M0_magnitude.nii.gz", "truth_M0_phase.nii.gz",
            "phantom.json", "truth.png"} <= names
    sig = nib.load(str(tmp_path / "ph" / "signal.nii.gz"))
    assert sig.shape == (16, 16, 1, ph.model.n_timepoints)
    assert sig.get_data_dtype() == np.complex64
    np.testing.assert_array_equal(np.asarray(sig.dataobj), ph.signal)
    info = json.loads((tmp_path / "ph" / "phantom.json").read_text())
    assert info["sequence_hash"] == sequence_hash(ph.model.sequence)
    assert info["seed"] == 7 and info["snr"] == 40 and info["sigma"] == pytest.approx(ph.sigma)
    assert "|M0|" in info["snr_definition"]
    assert info["tissues"]["WM"]["parameters"]["T1"]["source"] == "stanisz2005"
    t1 = nib.load(str(tmp_path / "ph" / "truth_T1.nii.gz"))
    np.testing.assert_allclose(t1.affine, sig.affine)
    np.testing.assert_allclose(np.asarray(t1.dataobj), ph.truth["T1"], rtol=1e-6)


def test_cli_phantom_and_its_errors(tmp_path, capsys):
    out = tmp_path / "ph"
    assert main(["phantom", "--model", "t2_decay", "--shape", "12x12", "--snr", "30",
                 "--seed", "1", "--out", str(out)]) == 0
    assert "sigma" in capsys.readouterr().out
    assert (out / "signal.nii.gz").exists()
    # a non-empty output folder is not overwritten without --overwrite
    assert main(["phantom", "--model", "t2_decay", "--shape", "12x12", "--snr", "30",
                 "--out", str(out)]) == 2
    base = ["phantom", "--model", "t2_decay", "--out", str(tmp_path / "bad")]
    for bad in (["--shape", "12x", "--snr", "30"], ["--snr", "-1"],
                ["--snr", "30", "--field-strength", "7"], ["--snr", "30", "--variation", "0.9"]):
        assert main(base + ["--shape", "12x12"] + bad) == 2
        assert "error" in capsys.readouterr().err
        assert not (tmp_path / "bad").exists()
