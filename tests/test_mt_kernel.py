"""The compiled CPU route of the MT Jacobian and CRB (crbnet.physics.models._mt_kernel) against the
torch.func route through ``simulate``, which the other tests check against an ODE solver,
reverse mode and finite differences."""


import numpy as np
import pytest
import torch
from torch.func import jacfwd

import crbnet
from crbnet import models, sequences
from crbnet.stats.crb import (
    SingularFisherWarning,
    _invert_fisher,
    _signal_and_jacobian,
    crb_details,
)


def _sequence(n: int, with_zero_flips: bool) -> sequences.MTSequence:
    theta = sequences.hann_interpolate(np.array([0.3, 1.2, 0.5, 0.15, 0.9, 1.5, 0.4]), n)
    theta = np.maximum(theta, 0.05)                        # short trains: no all-zero flips
    if with_zero_flips:
        theta[n // 3:n // 3 + 5] = 0.0                     # sin θ = 0: no signal there
    trf = sequences.hann_interpolate(np.array([1.0, 0.3, 0.1, 0.6, 1.0, 0.2, 0.8]), n) * 1e-3
    return sequences.MTSequence(TR=4.5e-3, theta=theta, TRF=trf, T_inv=10e-3, k_RF=4.0)


def _points(model, n: int, seed: int) -> torch.Tensor:
    """Random points over the training ranges plus corners of the physical bounds (m0s near
    0, fast exchange, long T2f, long T2s) where the closed forms switch to their series."""
    gen = torch.Generator().manual_seed(seed)
    lo = torch.tensor([r[0] for r in model.train_ranges.values()], dtype=torch.float64)
    hi = torch.tensor([r[1] for r in model.train_ranges.values()], dtype=torch.float64)
    theta = lo + (hi - lo) * torch.rand(n, len(lo), generator=gen, dtype=torch.float64)
    extreme = theta[:1].repeat(4, 1)
    names = list(model.parameters)
    # T2s = 1 ms with short pulses saturates hard: x = r² far above 1 (closed forms, r clamped)
    for row, (name, value) in enumerate((("m0s", 1e-4), ("Rx", 250.0), ("T2f", 2.0),
                                         ("T2s", 1e-3))):
        if name in names:
            extreme[row, names.index(name)] = value
    return torch.cat((theta, extreme))


def _both_routes(model, theta):
    fast = model.explicit_signal_and_jacobian(theta)
    assert fast is not None
    model.use_compiled_kernel = False
    try:
        assert model.explicit_signal_and_jacobian(theta) is None
        reference = _signal_and_jacobian(model, theta)
    finally:
        model.use_compiled_kernel = True
    return fast, reference


@pytest.mark.parametrize("fixed", [None, {"T1s": 1.0}, {}],
                         ids=["B1 fixed", "T1s fixed", "all free"])
@pytest.mark.parametrize("n_tr, zero_flips", [(97, False), (120, True)])
def test_compiled_jacobian_equals_torch_func_route(fixed, n_tr, zero_flips):
    model = models.get("mt_hybrid_state", sequence=_sequence(n_tr, zero_flips), fixed=fixed)
    theta = _points(model, 40, seed=n_tr)
    (signal, columns), (ref_signal, ref_columns) = _both_routes(model, theta)
    assert not signal.is_complex() and ref_signal.is_complex()
    assert ref_signal.imag.abs().max() == 0 and ref_columns.imag.abs().max() == 0
    torch.testing.assert_close(signal, ref_signal.real, rtol=0,
                               atol=1e-12 * ref_signal.abs().max().item())
    for j, name in enumerate(model.parameters):
        ref = ref_columns[j].real
        err = ((columns[j] - ref).abs().max() / ref.abs().max()).item()
        assert err < 1e-10, (name, err)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_compiled_simulate_equals_tensor_code(dtype):
    model = models.get("mt_hybrid_state", sequence=_sequence(120, True), fixed={})
    theta = _points(model, 30, seed=5).to(dtype)
    fast = model.simulate(theta)
    model.use_compiled_kernel = False
    try:
        reference = model.simulate(theta)
    finally:
        model.use_compiled_kernel = True
    assert fast.dtype == reference.dtype == (torch.complex128 if dtype == torch.float64
                                              else torch.complex64)
    tol = 1e-13 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(fast, reference, rtol=0, atol=tol * reference.abs().max().item())


def test_compiled_route_is_used_only_where_it_applies():
    model = models.get("mt_hybrid_state", sequence=_sequence(60, False))
    theta = _points(model, 4, seed=1)
    assert model.explicit_signal_and_jacobian(theta) is not None
    assert model.explicit_signal_and_jacobian(theta.float()) is None        # float32
    assert model.explicit_signal_and_jacobian(theta.clone().requires_grad_()) is None
    # simulate under autograd, dual tensors and torch.func keeps the tensor code (and its
    # derivatives); outside them it uses the kernel
    assert model._compiled_applies(theta)
    assert not model._compiled_applies(theta.clone().requires_grad_())
    with torch.autograd.forward_ad.dual_level():
        dual = torch.autograd.forward_ad.make_dual(theta, torch.ones_like(theta))
        assert not model._compiled_applies(dual)
    seen = []
    torch.func.vmap(lambda t: seen.append(model._compiled_applies(t)) or t)(theta)
    assert seen == [False]
    # crbnet.jacobian still gives complex [N, T, P] from the real kernel output
    jac = crbnet.jacobian(model, theta)
    assert jac.is_complex() and jac.shape == (theta.shape[0], 60, model.n_parameters)


@pytest.mark.parametrize("fixed", [None, {}], ids=["B1 fixed", "all free"])
def test_crb_from_the_kernels_gram_matrix_equals_torch_func_route(fixed):
    """The CRB through the kernel's Gram matrix (no Jacobian stored, Cholesky inverse) equals
    the CRB through the torch.func Jacobian, the complex Fisher matrix and eigh."""
    model = models.get("mt_hybrid_state", fixed=fixed)                    # default 666 TRs
    theta = _points(model, 30, seed=7)
    assert model.explicit_real_gram(theta) is not None
    fast = crbnet.crb(model, theta, sigma=0.02)
    model.use_compiled_kernel = False
    try:
        reference = crbnet.crb(model, theta, sigma=0.02)
    finally:
        model.use_compiled_kernel = True
    torch.testing.assert_close(fast, reference, rtol=1e-9, atol=0)


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "torch.func"])
def test_singular_fisher_is_reported_on_both_routes(compiled):
    """m0s = 0: Rx, T1s and T2s do not move the signal — inf, not a number."""
    model = models.get("mt_hybrid_state")
    model.use_compiled_kernel = compiled
    theta = model.theta_from_dict({"m0s": 0.0}, fill_defaults=True)
    theta = torch.cat((theta, model.theta_from_dict({}, fill_defaults=True)))
    with pytest.warns(SingularFisherWarning):
        var = crbnet.crb(model, theta)
    dead = [model.parameters.index(p) for p in ("Rx", "T1s", "T2s")]
    assert torch.isinf(var[0, dead]).all() and torch.isfinite(var[1]).all()
    assert torch.isfinite(var[0, [model.parameters.index(p) for p in ("T1f", "T2f")]]).all()
    details = crb_details(model, theta)
    assert details.singular.tolist() == [True, False]


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "torch.func"])
def test_too_few_samples_give_inf_not_an_error(compiled):
    """Two TRs (4 real numbers) cannot determine 6 parameters and M0: the Fisher matrix is
    rank-deficient (its Cholesky factor fails, possibly on an exact zero pivot)."""
    model = models.get("mt_hybrid_state", sequence=_sequence(2, False))
    model.use_compiled_kernel = compiled
    theta = _points(model, 8, seed=2)
    with pytest.warns(SingularFisherWarning):
        var = crbnet.crb(model, theta)
    assert torch.isinf(var).any(-1).all()


def test_one_voxel_one_parameter_and_short_sequences():
    """Edge sizes of the kernel (no bounds checks in compiled code): N = 1, P = 1, T = 1..7,
    against the tensor code."""
    for n_tr in (1, 3, 7):
        for fixed in ({k: v for k, v in models.get("mt_hybrid_state").defaults.items()
                       if k != "T2f"}, None):
            model = models.get("mt_hybrid_state", sequence=_sequence(n_tr, False), fixed=fixed)
            theta = _points(model, 1, seed=n_tr)[:1]
            (signal, columns), (ref_signal, ref_columns) = _both_routes(model, theta)
            torch.testing.assert_close(signal, ref_signal.real, rtol=1e-11, atol=1e-15)
            torch.testing.assert_close(columns, ref_columns.real, rtol=1e-9,
                                       atol=1e-12 * ref_columns.abs().max().item())


def test_voxel_row_derivatives_match_autodiff():
    model = models.get("mt_hybrid_state", fixed={})
    theta = _points(model, 5, seed=3)
    names = ("m0s", "T1f", "T2f", "Rx", "T1s", "T2s", "B1")

    def rows_of(values: torch.Tensor) -> torch.Tensor:
        p = {k: values[i:i + 1] for i, k in enumerate(names)}
        rows, beta = model._voxel_rows(p)
        return torch.cat((*rows, beta[None])).reshape(-1)

    analytic = model._voxel_row_derivatives(model.full_parameters(theta))     # [N, 9, 7]
    for i in range(theta.shape[0]):
        values = torch.stack([model.full_parameters(theta)[k][i] for k in names])
        torch.testing.assert_close(analytic[i], jacfwd(rows_of)(values), rtol=1e-13, atol=0)


def test_cholesky_inverse_equals_eigh_and_hands_ill_conditioned_matrices_to_eigh():
    gen = torch.Generator().manual_seed(0)
    n_theta, n = 5, 7
    A = torch.randn(50, n, 30, generator=gen, dtype=torch.float64)
    F = A @ A.mT
    # Voxel 0: exactly singular (Cholesky fails). Voxel 1: condition number 1e14 — Cholesky
    # succeeds, but the eigenvalue 1e-14·λ_max is below rcond·λ_max: it must still be flagged.
    B = A[0].clone()
    B[2] = 0.3 * B[0] - 1.1 * B[4]
    F[0] = B @ B.mT
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    evals = torch.logspace(0, -14, n, dtype=torch.float64)
    F[1] = (Q * evals) @ Q.T
    F[1] = 0.5 * (F[1] + F[1].T)
    s = torch.diagonal(F[1]).rsqrt()
    assert torch.linalg.cholesky_ex(F[1] * s[:, None] * s[None, :]).info == 0
    scale = torch.ones(F.shape[0], n_theta, dtype=torch.float64)
    rcond = 1000 * torch.finfo(torch.float64).eps
    res = _invert_fisher(F, n_theta, rcond, scale)
    expected = torch.diagonal(torch.linalg.inv(F[2:]), dim1=-2, dim2=-1)[:, :n_theta]
    torch.testing.assert_close(res.variance[2:], expected, rtol=1e-9, atol=0)
    assert res.singular.tolist() == [True, True] + [False] * 48
    assert torch.isinf(res.variance[0, 2]) and torch.isinf(res.variance[1]).any()


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "torch.func"])
def test_no_voxels_give_empty_results(compiled):
    model = models.get("mt_hybrid_state")
    model.use_compiled_kernel = compiled
    theta = torch.zeros(0, model.n_parameters, dtype=torch.float64)
    assert crbnet.crb(model, theta).shape == (0, model.n_parameters)
    assert crbnet.jacobian(model, theta).shape == (0, model.n_timepoints, model.n_parameters)
