"""CRB engine: closed form, M0 handling and scaling, singular Fisher matrices, subspaces."""

import math
import warnings

import numpy as np
import pytest
import torch

import crbnet
from crbnet import models, sequences
from crbnet.stats.crb import SingularFisherWarning, crb_details


def t2_closed_form_crb(times, T2, m, sigma):
    """Closed-form 3×3 Fisher matrix of y = M0·exp(-t/T2), M0 = m real, (T2, Re M0, Im M0)."""
    e2 = np.exp(-2 * times / T2)
    a = np.sum(m * m * times ** 2 * e2) / T2 ** 4      # F[T2, T2]
    b = np.sum(m * times * e2) / T2 ** 2               # F[T2, Re M0]
    c = np.sum(e2)                                     # F[Re M0, Re M0] = F[Im M0, Im M0]
    # Im M0 decouples (its column is i·f, orthogonal to the real columns under Re(JᴴJ)).
    return sigma ** 2 / (a - b * b / c)


@pytest.mark.parametrize("T2, m, sigma", [(0.05, 1.0, 0.01), (0.2, 3.0, 0.1), (0.012, 0.5, 1.0)])
def test_t2_decay_crb_matches_closed_form(T2, m, sigma):
    times = 10e-3 * np.arange(1, 33)
    model = models.get("t2_decay", sequence=sequences.from_times(times))
    theta = model.theta_from_dict({"T2": T2})
    got = crbnet.crb(model, theta, sigma=sigma, m0=m)[0, 0].item()
    expected = t2_closed_form_crb(times, T2, m, sigma)
    assert got == pytest.approx(expected, rel=1e-8)


def brute_force_crb(model, theta, sigma, m0):
    """CRB from finite-difference Jacobians of y = M0·f(θ) over (θ, Re M0, Im M0)."""
    def full(phi):
        th = torch.tensor([phi[:-2]], dtype=torch.float64)
        return (complex(phi[-2], phi[-1]) * model.simulate(th)[0]).numpy()
    phi0 = np.concatenate([theta[0].numpy(), [m0.real, m0.imag]])
    cols = []
    for j in range(phi0.size):
        h = 1e-6 * max(abs(phi0[j]), 1e-3)
        up, down = phi0.copy(), phi0.copy()
        up[j] += h
        down[j] -= h
        cols.append((full(up) - full(down)) / (2 * h))
    J = np.stack(cols, 1)
    F = (J.conj().T @ J).real / sigma ** 2
    return np.diag(np.linalg.inv(F))[:-2]


@pytest.mark.parametrize("name, point", [
    ("fisp_mrf", {"T1": 1.1, "T2": 0.09}),
    ("ir_t1", {"T1": 0.8}),
])
def test_crb_with_complex_m0_matches_brute_force(name, point):
    model = models.get(name)
    theta = model.theta_from_dict(point)
    m0 = 2.0 * complex(math.cos(0.7), math.sin(0.7))
    sigma = 0.05
    got = crbnet.crb(model, theta, sigma=sigma, m0=m0)[0].numpy()
    np.testing.assert_allclose(got, brute_force_crb(model, theta, sigma, m0), rtol=1e-5)


def test_crb_scales_with_sigma_squared_over_m0_squared_and_ignores_phase():
    model = models.get("fisp_mrf")
    theta = model.theta_from_dict({"T1": 1.3, "T2": 0.1})
    base = crbnet.crb(model, theta)
    scaled = crbnet.crb(model, theta, sigma=0.3, m0=1.5j)
    torch.testing.assert_close(scaled, base * (0.3 / 1.5) ** 2)
    per_voxel = crbnet.crb(model, theta.repeat(3, 1), sigma=torch.tensor([0.1, 0.2, 0.2]),
                           m0=torch.tensor([1.0, 1.0, 2.0]))
    torch.testing.assert_close(per_voxel[1], per_voxel[0] * 4)
    torch.testing.assert_close(per_voxel[2], per_voxel[0])


def test_singular_fisher_is_reported_not_inverted():
    model = models.get("mt_hybrid_state")
    theta = model.theta_from_dict({"m0s": 0.0}, fill_defaults=True)
    with pytest.warns(SingularFisherWarning, match="Rx"):
        var = crbnet.crb(model, theta)[0]
    params = dict(zip(model.parameters, var.tolist()))
    # Without a semi-solid pool its exchange, T1 and T2 have no effect on the signal.
    assert all(math.isinf(params[p]) for p in ("Rx", "T1s", "T2s"))
    assert math.isfinite(params["T1f"]) and math.isfinite(params["T2f"])
    assert crb_details(model, theta).singular.all()


def test_regular_point_is_not_flagged():
    model = models.get("mt_hybrid_state")
    theta = model.theta_from_dict({}, fill_defaults=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SingularFisherWarning)
        var = crbnet.crb(model, theta)
    assert torch.isfinite(var).all() and (var > 0).all()


def test_subspace_projection_full_basis_is_lossless_and_truncation_loses():
    model = models.get("fisp_mrf", sequence=sequences.default_fisp_sequence(120))
    gen = torch.Generator().manual_seed(0)
    T = model.n_timepoints
    q, _ = torch.linalg.qr(torch.randn(T, T, dtype=torch.complex128, generator=gen))
    theta = torch.tensor([[0.9, 0.06], [2.0, 0.2]], dtype=torch.float64)
    full = crbnet.crb(model, theta)
    torch.testing.assert_close(crbnet.crb(model, theta, basis=q), full, rtol=1e-8, atol=0)
    # an SVD basis of signals from the training range keeps most information with few vectors
    train = model.simulate(torch.tensor([[t1, t2] for t1 in (0.3, 1.0, 3.0)
                                         for t2 in (0.03, 0.1, 0.4)], dtype=torch.float64))
    U = torch.linalg.svd(train.T, full_matrices=False)[0][:, :4]
    reduced = crbnet.crb(model, theta, basis=U)
    assert (reduced >= full * (1 - 1e-10)).all()
    assert (reduced <= full * 5).all()


def test_float32_input_gives_float32_output_of_float64_accuracy():
    model = models.get("t2_decay")
    theta = model.theta_from_dict({"T2": 0.07})
    v64 = crbnet.crb(model, theta)
    v32 = crbnet.crb(model, theta.float())
    assert v32.dtype == torch.float32
    assert v32.double().item() == pytest.approx(v64.item(), rel=1e-6)


def test_chunking_does_not_change_results():
    model = models.get("fisp_mrf", sequence=sequences.default_fisp_sequence(60))
    theta = torch.tensor([[0.5 + 0.1 * i, 0.02 + 0.01 * i] for i in range(7)], dtype=torch.float64)
    torch.testing.assert_close(crbnet.crb(model, theta, chunk_size=3), crbnet.crb(model, theta))
