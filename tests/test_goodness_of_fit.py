"""``apply``'s goodness-of-fit map (σ̂_v / σ, the square root of the reduced χ²): about 1 where
only noise is left, high where the model misses the data, written with a sidecar and summarised
in apply.json."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import stats
from test_apply import T2LeastSquares

from crbnet.imaging.apply import apply_to_volume
from crbnet.imaging.nifti import ArraySignals
from crbnet.imaging.phantom import make_phantom

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def phantom():
    return make_phantom("t2_decay", (24, 24), snr=100, seed=12)


def test_noise_only_residuals_give_the_chi_square_level(phantom, tmp_path):
    """With the true σ given, g² · d follows χ²_d in voxels the model describes."""
    est = T2LeastSquares(phantom.model)
    res = apply_to_volume(est, ArraySignals(phantom.signal, phantom.affine), tmp_path / "m",
                          mask=phantom.mask, sigma=phantom.sigma, progress=False, figure=False,
                          uncertainty=False)
    g = res.maps["goodness_of_fit"][res.mask]
    d = 2 * phantom.model.n_timepoints - phantom.model.n_parameters - 2
    tissue = (phantom.labels != 1)[res.mask]          # CSF: T2 beyond the grid's reach
    assert np.median(g[tissue]) == pytest.approx(np.sqrt(stats.chi2.median(d) / d), rel=0.03)
    summary = res.summary["goodness_of_fit"]
    assert summary["sigma"] == pytest.approx(phantom.sigma)
    assert summary["sigma_source"] == "given" and summary["dof"] == d
    assert summary["q1"] < summary["median"] < summary["q3"]
    # the file and its sidecar, as the other maps
    on_disk = np.asarray(nib.load(str(tmp_path / "m" / "goodness_of_fit.nii.gz")).dataobj)
    np.testing.assert_allclose(on_disk[res.mask], g, rtol=1e-6)
    side = json.loads((tmp_path / "m" / "goodness_of_fit.json").read_text())
    assert side["Sigma"] == pytest.approx(phantom.sigma) and side["Units"] == "1"


def test_a_misfit_stands_out(phantom, tmp_path):
    """Voxels with a signal the model cannot make (a constant added to every echo) get a
    goodness of fit far above 1; σ from the residuals keeps the others near 1."""
    signal = phantom.signal.copy()
    bad = np.zeros(phantom.mask.shape, bool)
    bad[8:14, 8:14] = True
    bad &= phantom.mask & (phantom.labels != 1)   # a constant is close to CSF's slow decay
    signal[bad] += 0.3 * np.abs(signal[bad]).max(-1, keepdims=True)
    res = apply_to_volume(T2LeastSquares(phantom.model), ArraySignals(signal, phantom.affine),
                          tmp_path / "m", mask=phantom.mask, noise="residual", progress=False,
                          figure=False, uncertainty=False)
    g = res.maps["goodness_of_fit"]
    good = res.mask & ~bad & (phantom.labels != 1)
    assert bad.sum() >= 5
    assert np.min(g[bad]) > 3 * np.median(g[good])
    assert np.median(g[good]) == pytest.approx(1.0, abs=0.1)
    assert res.summary["goodness_of_fit"]["sigma_source"] == "residual"


def test_per_voxel_noise_uses_the_median_residual(phantom, tmp_path):
    """With σ per voxel the map would be 1 everywhere: it is relative to the median residual
    level instead, so it still varies."""
    res = apply_to_volume(T2LeastSquares(phantom.model),
                          ArraySignals(phantom.signal, phantom.affine), tmp_path / "m",
                          mask=phantom.mask, noise="voxel", progress=False, figure=False,
                          uncertainty=False)
    summary = res.summary["goodness_of_fit"]
    assert summary["sigma_source"] == "residual"
    assert summary["sigma"] == pytest.approx(res.summary["noise"]["sigma_residual_median"])
    g = res.maps["goodness_of_fit"][res.mask]
    assert g.std() > 0.05
