"""``apply``'s per-voxel work after the estimate: the least-squares M0, an estimator's own fit
(dictionary: M0 and residual from the match) against a fresh simulation, the signal and CRB
from one forward-mode pass, map names from the model, and the time per stage."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crbnet import models
from crbnet.estimators import DictionaryEstimator
from crbnet.estimators.protocol import least_squares_m0
from crbnet.imaging.apply import apply_to_volume
from crbnet.imaging.nifti import ArraySignals
from crbnet.physics.models import ParameterSpec
from crbnet.physics.models.analytic import T2Decay
from crbnet.stats.projected import ProjectedModel
from crbnet.stats.crb import crb_details, signal_and_crb
from crbnet.stats.noise import add_noise, random_m0
from crbnet.stats.sampling import ParameterSampler
from crbnet.stats.subspace import fit_subspace

pytestmark = pytest.mark.usefixtures("one_thread")


def noisy(model, n, seed, snr=50.0):
    gen = torch.Generator().manual_seed(seed)
    theta = ParameterSampler(model).sample(n, gen).to(torch.float64)
    m0 = random_m0(n, (0.5, 2.0), generator=gen)
    clean = m0[:, None] * model.simulate(theta).to(torch.complex128)
    return theta, add_noise(clean, 1.0 / snr, gen)


def test_least_squares_m0_recovers_m0_and_zero_signal_gives_zero():
    gen = torch.Generator().manual_seed(0)
    f = torch.randn(5, 7, dtype=torch.complex128, generator=gen)
    m0 = torch.randn(5, dtype=torch.complex128, generator=gen)
    assert torch.allclose(least_squares_m0(f, m0[:, None] * f), m0, rtol=1e-12, atol=0)
    assert least_squares_m0(torch.zeros(1, 7, dtype=torch.complex128), f[:1]).item() == 0


@pytest.mark.parametrize("full_atoms_bytes", [2 ** 28, 0])
def test_dictionary_fit_equals_least_squares_on_the_simulated_atom(full_atoms_bytes):
    """Stored atoms (or, without them, atoms simulated again) give the exact full-space M0
    and residual of the match."""
    model = models.get("t2_decay")
    dictionary = DictionaryEstimator(model, n_points=200, progress=False,
                                     full_atoms_bytes=full_atoms_bytes)
    _, y = noisy(model, 64, seed=1)
    fit = dictionary.predict_with_fit(y)
    assert (dictionary.atoms_full is not None) == (full_atoms_bytes > 0)
    f = model.simulate(fit.theta).to(torch.complex128)
    m0 = least_squares_m0(f, y)
    rss = (y - m0[:, None] * f).abs().square().sum(-1)
    assert torch.allclose(fit.m0, m0, rtol=1e-12, atol=0)
    assert torch.allclose(fit.rss, rss, rtol=1e-9, atol=0)
    assert torch.equal(fit.theta, dictionary.predict(y))


@pytest.mark.parametrize("name, projected", [("fisp_mrf", False), ("fisp_mrf", True),
                                             ("t2_decay", False)])
def test_signal_and_crb_equal_simulate_plus_crb(name, projected):
    """Gram route (fisp_mrf), its own Jacobian projected, and torch.func (t2_decay)."""
    model = models.get(name)
    gen = torch.Generator().manual_seed(2)
    theta = ParameterSampler(model).sample(6, gen).to(torch.float64)
    if projected:
        basis = fit_subspace(model.simulate(ParameterSampler(model).sample(64, gen)), k=6).basis
        model = ProjectedModel(model, basis)
    signal, result = signal_and_crb(model, theta, chunk_size=4)
    reference = crb_details(model, theta)
    assert torch.allclose(signal, model.simulate(theta).to(torch.complex128), rtol=0,
                          atol=1e-12)
    assert torch.allclose(result.variance, reference.variance, rtol=1e-9, atol=0)
    assert torch.equal(result.singular, reference.singular)


class RenamedT2(T2Decay):
    """t2_decay whose T2 map is written under a name of the model's own choosing."""

    specs = (ParameterSpec("T2", "s", (1e-3, 10.0), (0.01, 2.5), 0.08, True,
                           "transverse relaxation time", map_name="T2weighted"),)


@pytest.mark.parametrize("model_class, stem", [(RenamedT2, "T2weighted"), (T2Decay, "T2map")])
def test_map_names_come_from_the_model(model_class, stem, tmp_path):
    model = model_class()
    _, y = noisy(model, 12 * 12, seed=3)
    data = y.numpy().reshape(12, 12, -1)
    result = apply_to_volume(DictionaryEstimator(model, n_points=100, progress=False),
                             ArraySignals(data), tmp_path / "maps", mask=np.ones((12, 12), bool),
                             sigma=0.02, progress=False, figure=False)
    assert (tmp_path / "maps" / f"{stem}.nii.gz").is_file()
    assert (tmp_path / "maps" / f"{stem}_CRBstd.nii.gz").is_file()
    stages = result.summary["seconds_by_stage"]
    assert {"read", "estimate", "m0_residual", "signal_and_crb", "write"} <= set(stages)
    assert sum(stages.values()) == pytest.approx(result.summary["seconds"], abs=0.05)
