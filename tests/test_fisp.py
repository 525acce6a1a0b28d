"""fisp_mrf: exactness against an untruncated EPG written here, the compiled route against the
tensor route and finite differences, the truncation option, and autograd through epg_signal."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from crbnet import models, sequences
from crbnet.physics.models.base import ModelError
from crbnet.physics.models.fisp_mrf import epg_signal, exact_n_states
from crbnet.stats.crb import crb_details, jacobian, signal_and_jacobian

# Tissues across the parameter bounds: short relaxation, white and grey matter, long T2,
# CSF (T1 4 s, T2 2 s), the longest brain relaxation (5 s, 3 s) and the upper corner.
POINTS = [(0.1, 0.01, 1.0), (0.8, 0.07, 0.7), (1.5, 0.3, 1.3), (4.0, 2.0, 1.0),
          (5.0, 3.0, 0.9), (10.0, 5.0, 1.0), (0.01, 0.001, 1.0)]


def untruncated_epg(seq, T1, T2, B1):
    """Complex EPG with every order 0 … T kept (the number of TRs: nothing can be lost), the
    RF matrix of Weigel 2015 eq. 15 with phase 0, and relaxation in two steps (to TE, then to
    the TR end) — written independently of crbnet. T1, T2, B1: arrays [N]. Returns [N, T]."""
    n_tr = seq.n_timepoints
    K = n_tr + 1
    F_plus = np.zeros((K, T1.size), complex)
    F_minus = np.zeros_like(F_plus)
    Z = np.zeros_like(F_plus)
    Z[0] = 1 - 2 * np.exp(-seq.TI / T1)
    out = np.zeros((T1.size, n_tr), complex)
    for n in range(n_tr):
        a = B1 * seq.flip[n]
        c2, s2, sa, ca = np.cos(a / 2) ** 2, np.sin(a / 2) ** 2, np.sin(a), np.cos(a)
        F_plus, F_minus, Z = (c2 * F_plus + s2 * F_minus - 1j * sa * Z,
                              s2 * F_plus + c2 * F_minus + 1j * sa * Z,
                              -0.5j * sa * F_plus + 0.5j * sa * F_minus + ca * Z)
        for dt, record in ((seq.TE, True), (seq.TR[n] - seq.TE, False)):
            e1, e2 = np.exp(-dt / T1), np.exp(-dt / T2)
            F_plus, F_minus, Z = F_plus * e2, F_minus * e2, Z * e1
            Z[0] += 1 - e1
            if record:
                out[:, n] = F_plus[0]
        F_plus = np.roll(F_plus, 1, axis=0)
        F_minus = np.roll(F_minus, -1, axis=0)
        F_minus[-1] = 0
        F_plus[0] = np.conj(F_minus[0])
    return out


def relative_error(got, ref):
    """max_t |got − ref| / max_t |ref|, worst voxel (last axis: time)."""
    got, ref = np.asarray(got), np.asarray(ref)
    return float((np.abs(got - ref).max(-1) / np.abs(ref).max(-1)).max())


def short_sequence(n=40):
    return sequences.default_fisp_sequence(n)


def theta_of(points, with_b1=True):
    cols = points if with_b1 else [p[:2] for p in points]
    return torch.tensor(cols, dtype=torch.float64)


# ---- exactness ---------------------------------------------------------------------------
@pytest.mark.parametrize("n_tr", [40, 41])
def test_signal_and_jacobian_equal_untruncated_epg_across_bounds(n_tr):
    seq = short_sequence(n_tr)
    model = models.get("fisp_mrf", sequence=seq, fixed={})
    assert model.n_states == exact_n_states(n_tr) == (n_tr + 1) // 2 and model.exact
    theta = theta_of(POINTS)
    T1, T2, B1 = (theta[:, j].numpy() for j in range(3))
    ref = untruncated_epg(seq, T1, T2, B1)
    sig, jac = signal_and_jacobian(model, theta)
    assert relative_error(sig.numpy(), ref) < 1e-12
    for j, values in enumerate((T1, T2, B1)):
        h = 1e-6 * values
        args_up = [T1, T2, B1]
        args_down = [T1, T2, B1]
        args_up[j], args_down[j] = values + h, values - h
        fd = (untruncated_epg(seq, *args_up) - untruncated_epg(seq, *args_down)) / (2 * h[:, None])
        assert relative_error(jac[:, :, j].numpy(), fd) < 1e-5, model.parameters[j]


def test_default_sequence_is_exact_for_csf():
    """The 400-TR default schedule at a few voxels (CSF included), with B1 fixed: 200 states,
    signal and Jacobian equal to the untruncated recursion; 26 states (the old default) miss
    CSF by over 1 %."""
    model = models.get("fisp_mrf")
    assert model.n_states == 200
    theta = torch.tensor([[4.0, 2.0], [5.0, 3.0], [0.9, 0.06]], dtype=torch.float64)
    T1, T2 = theta[:, 0].numpy(), theta[:, 1].numpy()
    one = np.ones_like(T1)
    ref = untruncated_epg(model.sequence, T1, T2, one)
    sig, jac = signal_and_jacobian(model, theta)
    assert relative_error(sig.numpy(), ref) < 1e-12
    h = 1e-6 * T2
    fd = (untruncated_epg(model.sequence, T1, T2 + h, one)
          - untruncated_epg(model.sequence, T1, T2 - h, one)) / (2 * h[:, None])
    assert relative_error(jac[:, :, 1].numpy(), fd) < 1e-5
    old = models.get("fisp_mrf", max_order=25)
    assert relative_error(old.simulate(theta[:1]).numpy(), ref[:1]) > 1e-2


def test_truncation_option_and_its_measured_error():
    seq = short_sequence(60)
    exact = models.get("fisp_mrf", sequence=seq)
    assert exact.truncation_error() == 0.0
    # more orders than can reach an echo: the same exact model
    assert models.get("fisp_mrf", sequence=seq, max_order=500).n_states == exact.n_states
    errors = [exact.truncation_error(order) for order in (5, 15, exact.max_order - 1)]
    assert errors[0] > errors[1] > errors[2] > 0
    # the measured error is what a truncated model gives against the untruncated recursion
    cut = models.get("fisp_mrf", sequence=seq, max_order=15)
    assert cut.max_order == 15 and cut.n_states == 16 and not cut.exact
    theta = torch.tensor([[5.0, 3.0]], dtype=torch.float64)
    ref = untruncated_epg(seq, np.array([5.0]), np.array([3.0]), np.array([1.0]))
    assert relative_error(cut.simulate(theta).numpy(), ref) <= errors[1] * (1 + 1e-9)
    for bad in (0, -3, 2.5):
        with pytest.raises(ModelError, match="max_order"):
            models.get("fisp_mrf", max_order=bad)


# ---- the compiled route against the tensor route -------------------------------------------
def tensor_route(model, tangents=False):
    """The same model on the tensor recursion: Jacobians by torch.func (the generic route of
    crbnet.crb), or with ``tangents`` by the model's own tensor tangents."""
    twin = models.get("fisp_mrf", sequence=model.sequence, fixed=model.fixed,
                      max_order=model.max_order)
    twin.use_compiled_kernel = False
    twin.use_tensor_tangents = tangents
    return twin


@pytest.mark.parametrize("fixed, max_order", [({}, None), (None, None), ({"T2": 0.05}, None),
                                               ({"B1": 0.9}, 7)])
def test_compiled_route_equals_tensor_route(fixed, max_order):
    model = models.get("fisp_mrf", sequence=short_sequence(50), fixed=fixed, max_order=max_order)
    slow = tensor_route(model)
    columns = {"T1": 0, "T2": 1, "B1": 2}
    theta = theta_of(POINTS)[:, [columns[p] for p in model.parameters]]
    assert model.explicit_signal_and_jacobian(theta) is not None
    assert slow.explicit_signal_and_jacobian(theta) is None
    torch.testing.assert_close(model.simulate(theta), slow.simulate(theta), rtol=0, atol=1e-13)
    sig, jac = signal_and_jacobian(model, theta)
    sig_ref, jac_ref = signal_and_jacobian(slow, theta)   # torch.func jvp + vmap
    torch.testing.assert_close(sig, sig_ref, rtol=0, atol=1e-13)
    scale = jac_ref.abs().amax(1, keepdim=True)
    assert ((jac - jac_ref).abs() / scale).max() < 1e-10
    # the in-kernel Gram matrix is that of the Jacobian's columns and the signal (imaginary
    # parts), and the CRB through it equals the CRB through the generic route
    cols = torch.cat((jac.imag.permute(2, 0, 1), sig.imag[None])).permute(1, 0, 2)
    gram = model.explicit_real_gram(theta)
    torch.testing.assert_close(gram, cols @ cols.mT, rtol=1e-10, atol=0)
    fast, generic = crb_details(model, theta), crb_details(slow, theta)
    torch.testing.assert_close(fast.variance, generic.variance, rtol=1e-8, atol=0)
    assert torch.equal(fast.singular, generic.singular)


@pytest.mark.parametrize("fixed", [{}, {"T1": 1.0}])
def test_tensor_tangents_equal_torch_func(fixed):
    """The Jacobian route used on CUDA (and on CPU without numba): tangents carried through
    the tensor recursion, against torch.func through the same recursion."""
    model = tensor_route(models.get("fisp_mrf", sequence=short_sequence(45), fixed=fixed),
                         tangents=True)
    generic = tensor_route(model)
    columns = {"T1": 0, "T2": 1, "B1": 2}
    theta = theta_of(POINTS)[:, [columns[p] for p in model.parameters]]
    assert model.explicit_signal_and_jacobian(theta) is not None
    assert model.explicit_real_gram(theta) is None
    sig, jac = signal_and_jacobian(model, theta)
    sig_ref, jac_ref = signal_and_jacobian(generic, theta)
    torch.testing.assert_close(sig, sig_ref, rtol=0, atol=1e-13)
    assert ((jac - jac_ref).abs() / jac_ref.abs().amax(1, keepdim=True)).max() < 1e-10
    # under autodiff the model's tangents step aside
    assert model.explicit_signal_and_jacobian(theta.clone().requires_grad_(True)) is None


def test_float32_simulation_and_fallbacks():
    model = models.get("fisp_mrf", sequence=short_sequence(50), fixed={})
    theta = theta_of(POINTS[:6])
    s64 = model.simulate(theta)
    s32 = model.simulate(theta.float())
    assert s32.dtype == torch.complex64
    assert relative_error(s32.numpy(), s64.numpy()) < 1e-5
    # float32 Jacobians come from the tensor tangents (the kernel's derivatives are float64)
    jac32, jac64 = jacobian(model, theta.float()), jacobian(model, theta)
    assert jac32.dtype == torch.complex64
    assert ((jac32.to(torch.complex128) - jac64).abs() / jac64.abs().amax(1, keepdim=True)).max() < 1e-3
    # inside autodiff the tensor route runs (the kernel's numbers carry no derivative)
    th = theta.clone().requires_grad_(True)
    model.simulate(th).imag.sum().backward()
    assert th.grad is not None and torch.isfinite(th.grad).all()
    assert jacobian(model, theta[:0]).shape == (0, model.n_timepoints, 3)


# ---- epg_signal stays differentiable in the schedule ---------------------------------------
def test_epg_signal_gradient_in_flip_and_tr_matches_finite_differences():
    seq = short_sequence(30)
    model = models.get("fisp_mrf", sequence=seq)
    T1 = torch.tensor([1.2, 4.0], dtype=torch.float64)
    T2 = torch.tensor([0.1, 2.0], dtype=torch.float64)
    flip = torch.tensor(seq.flip, requires_grad=True)
    tr = torch.tensor(seq.TR, requires_grad=True)

    def loss(f, t):
        s = epg_signal(T1, T2, 1.0, f, t, seq.TE, seq.TI, model.n_states)
        return (s.imag ** 2).sum()

    loss(flip, tr).backward()
    for grad, name, step in ((flip.grad, "flip", 1e-6), (tr.grad, "tr", 1e-9)):
        for n in (0, 7, 29):
            up = [flip.detach().clone(), tr.detach().clone()]
            down = [flip.detach().clone(), tr.detach().clone()]
            which = 0 if name == "flip" else 1
            up[which][n] += step
            down[which][n] -= step
            fd = (loss(*up) - loss(*down)) / (2 * step)
            assert math.isclose(grad[n].item(), fd.item(), rel_tol=1e-5, abs_tol=1e-9), (name, n)


def test_models_command_prints_truncation_error(capsys):
    from crbnet.cli.app import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "EPG orders" in out and "max_order" in out
