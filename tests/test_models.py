"""Signal models against independent references: an ODE solver, generic matrix exponentials,
a brute-force isochromat Bloch simulation, and finite differences."""

import math

import numpy as np
import pytest
import torch
import torch.autograd.forward_ad as fwAD
from scipy.integrate import solve_ivp
from scipy.linalg import expm

from crbnet import models, sequences
from crbnet.physics.models import ModelError
from crbnet.stats.crb import jacobian

MT_POINT = {"m0s": 0.2, "T1f": 0.9, "T2f": 0.06, "Rx": 25.0, "T1s": 0.7, "T2s": 11e-6}


# ---- reference implementation of docs/physics.md §1, written from the equations ------------
def mt_rhs_matrix(p, theta, trf, seq):
    """A (2×2) and b of dy/dt = A y + b for y = (r_f, z_s) during one TR."""
    a = p["B1"] * theta
    c, s = math.cos(a), math.sin(a)
    W = seq.k_RF * a * a * p["T2s"] / (trf * seq.TR)
    A = np.array([
        [-(c * c / p["T1f"] + s * s / p["T2f"] + c * c * p["Rx"] * p["m0s"]),
         p["Rx"] * (1 - p["m0s"]) * c],
        [p["Rx"] * p["m0s"] * c, -(1 / p["T1s"] + p["Rx"] * (1 - p["m0s"]) + W)],
    ])
    b = np.array([(1 - p["m0s"]) * c / p["T1f"], p["m0s"] / p["T1s"]])
    return A, b


def invert(y, p, seq):
    return np.array([-y[0], y[1] * (1 - math.pi ** 2 * p["T2s"] / seq.T_inv)])


def short_mt_sequence(n=120):
    theta = sequences.hann_interpolate(np.array([0.3, 1.2, 0.5, 0.15, 0.9, 1.5, 0.4]), n)
    trf = sequences.hann_interpolate(np.array([1.0, 0.3, 0.1, 0.6, 1.0, 0.2, 0.8]), n) * 1e-3
    return sequences.MTSequence(TR=4.5e-3, theta=theta, TRF=trf, T_inv=10e-3, k_RF=4.0)


def simulate_mt(seq, point, fixed=None):
    model = models.get("mt_hybrid_state", sequence=seq, fixed=fixed)
    theta = model.theta_from_dict(point)
    return model.simulate(theta)[0].numpy()


@pytest.mark.parametrize("B1", [1.0, 0.85])
def test_mt_steady_state_matches_stiff_ode_integration_over_many_cycles(B1):
    seq = short_mt_sequence()
    p = dict(MT_POINT, B1=B1)
    y = np.array([0.3, -0.05])   # arbitrary start, far from the steady state
    previous = None
    for cycle in range(80):
        y = invert(y, p, seq)
        samples = []
        for n in range(seq.n_timepoints):
            A, b = mt_rhs_matrix(p, seq.theta[n], seq.TRF[n], seq)
            for half in range(2):
                sol = solve_ivp(lambda t, u: A @ u + b, (0, seq.TR / 2), y, method="Radau",
                                jac=lambda t, u: A, rtol=1e-11, atol=1e-13)
                y = sol.y[:, -1]
                if half == 0:
                    samples.append(y[0] * math.sin(B1 * seq.theta[n]))
        samples = np.array(samples)
        if previous is not None and np.max(np.abs(samples - previous)) < 1e-11:
            break
        previous = samples
    assert cycle < 79, "ODE reference did not converge"
    fixed = {} if B1 != 1.0 else None
    point = dict(MT_POINT, B1=B1) if B1 != 1.0 else MT_POINT
    signal = simulate_mt(seq, point, fixed=fixed)
    assert np.abs(signal.imag).max() == 0
    rel = np.max(np.abs(signal.real - samples)) / np.max(np.abs(samples))
    assert rel < 1e-5, rel


def test_mt_exact_steady_state_is_the_limit_of_repeated_cycles():
    """Iterate whole cycles of the default 666-TR sequence with generic 3×3 matrix exponentials
    (augmented affine system) until nothing changes; compare with the closed-form solution."""
    seq = sequences.default_mt_sequence()
    p = dict(MT_POINT, B1=1.0)
    half_maps = []
    for n in range(seq.n_timepoints):
        A, b = mt_rhs_matrix(p, seq.theta[n], seq.TRF[n], seq)
        aug = np.zeros((3, 3))
        aug[:2, :2], aug[:2, 2] = A, b
        half_maps.append(expm(aug * seq.TR / 2))
    y = np.array([0.0, 0.0, 1.0])
    previous = None
    for cycle in range(200):
        y = np.append(invert(y[:2], p, seq), 1.0)
        samples = []
        for n, H in enumerate(half_maps):
            y = H @ y
            samples.append(y[0] * math.sin(seq.theta[n]))
            y = H @ y
        samples = np.array(samples)
        if previous is not None and np.max(np.abs(samples - previous)) < 1e-14:
            break
        previous = samples
    signal = simulate_mt(seq, MT_POINT).real
    np.testing.assert_allclose(signal, samples, rtol=0, atol=1e-10 * np.abs(samples).max())


def test_mt_float32_agrees_with_float64():
    model = models.get("mt_hybrid_state")
    theta = model.theta_from_dict(MT_POINT)
    s64 = model.simulate(theta)
    s32 = model.simulate(theta.float())
    assert s32.dtype == torch.complex64
    assert torch.allclose(s32.to(torch.complex128), s64, atol=1e-5 * s64.abs().max().item())


def test_mt_signal_is_proportional_to_free_pool_and_vanishes_without_rf():
    """With θ = 0 everywhere there is no transverse signal; with m0s → larger at equal T1f
    the saturation of the semi-solid pool lowers the free-pool signal."""
    seq = short_mt_sequence()
    zero = sequences.MTSequence(TR=seq.TR, theta=np.zeros(seq.n_timepoints), TRF=seq.TRF)
    assert np.abs(simulate_mt(zero, MT_POINT)).max() == 0
    low = np.abs(simulate_mt(seq, dict(MT_POINT, m0s=0.05))).mean()
    high = np.abs(simulate_mt(seq, dict(MT_POINT, m0s=0.3))).mean()
    assert high < low


# ---- FISP against a brute-force isochromat Bloch simulation ------------------------------------
def isochromat_fisp(seq, T1, T2, B1=1.0, n_spins=1000):
    """Spins spread evenly over one dephasing cycle; the gradient after each TR turns spin j by
    2πj/n_spins. With more spins than TRs this is exact (no aliasing of dephasing orders)."""
    phi = 2 * np.pi * np.arange(n_spins) / n_spins
    M = np.zeros((n_spins, 3))
    M[:, 2] = 1.0
    M[:, 2] *= -1  # ideal inversion
    E1 = math.exp(-seq.TI / T1)
    M[:, 2] = M[:, 2] * E1 + (1 - E1)
    out = []
    for n in range(seq.n_timepoints):
        a = B1 * seq.flip[n]
        ca, sa = math.cos(a), math.sin(a)
        My, Mz = M[:, 1] * ca - M[:, 2] * sa, M[:, 1] * sa + M[:, 2] * ca  # rotation about x
        M = np.stack((M[:, 0], My, Mz), 1)
        for dt in (seq.TE, None):
            dt = seq.TE if dt is not None else seq.TR[n] - seq.TE
            e1, e2 = math.exp(-dt / T1), math.exp(-dt / T2)
            M = np.stack((M[:, 0] * e2, M[:, 1] * e2, M[:, 2] * e1 + (1 - e1)), 1)
            if len(out) == n:
                out.append(np.mean(M[:, 0] + 1j * M[:, 1]))
        cp, sp = np.cos(phi), np.sin(phi)
        M = np.stack((M[:, 0] * cp - M[:, 1] * sp, M[:, 0] * sp + M[:, 1] * cp, M[:, 2]), 1)
    return np.array(out)


@pytest.mark.parametrize("T1, T2, B1", [(1.0, 0.08, 1.0), (0.4, 0.3, 0.8)])
def test_fisp_epg_matches_isochromat_simulation(T1, T2, B1):
    seq = sequences.default_fisp_sequence(400)
    ref = isochromat_fisp(seq, T1, T2, B1)
    # the default model keeps every EPG order that reaches an echo: it agrees to round-off
    model = models.get("fisp_mrf", sequence=seq, fixed={})
    sig = model.simulate(model.theta_from_dict({"T1": T1, "T2": T2, "B1": B1}))[0].numpy()
    assert np.max(np.abs(sig - ref)) / np.max(np.abs(ref)) < 1e-9
    # truncated to orders ≤ 25 (the max_order option) it is close for these T2 ≤ 0.3 s
    cut = models.get("fisp_mrf", sequence=seq, fixed={}, max_order=25)
    sig_cut = cut.simulate(cut.theta_from_dict({"T1": T1, "T2": T2, "B1": B1}))[0].numpy()
    err = np.max(np.abs(sig_cut - ref)) / np.max(np.abs(ref))
    assert err < 1e-3, err


# ---- analytic models ---------------------------------------------------------------------------
def test_analytic_models_closed_forms():
    t2 = models.get("t2_decay", sequence=sequences.from_times([0.01, 0.05, 0.2]))
    s = t2.simulate(t2.theta_from_dict({"T2": 0.05}))[0]
    np.testing.assert_allclose(s.real.numpy(), np.exp(-np.array([0.01, 0.05, 0.2]) / 0.05))
    ir = models.get("ir_t1", sequence=sequences.from_times([0.0, 0.7, 10.0]))
    s = ir.simulate(ir.theta_from_dict({"T1": 1.0}))[0]
    np.testing.assert_allclose(s.real.numpy(), 1 - 2 * np.exp(-np.array([0.0, 0.7, 10.0])))


# ---- Jacobians vs central finite differences ---------------------------------------------------
@pytest.mark.parametrize("name, point, fixed", [
    ("mt_hybrid_state", dict(MT_POINT, B1=0.95), {}),
    ("fisp_mrf", {"T1": 0.8, "T2": 0.07, "B1": 1.1}, {}),
    ("t2_decay", {"T2": 0.06}, None),
    ("ir_t1", {"T1": 0.9}, None),
])
def test_jacobian_matches_central_finite_differences(name, point, fixed):
    seq = short_mt_sequence() if name == "mt_hybrid_state" else None
    model = models.get(name, sequence=seq, fixed=fixed)
    theta = model.theta_from_dict(point)
    jac = jacobian(model, theta)[0]
    for j, p in enumerate(model.parameters):
        h = 1e-5 * abs(point[p])
        up, down = theta.clone(), theta.clone()
        up[0, j] += h
        down[0, j] -= h
        fd = (model.simulate(up) - model.simulate(down))[0] / (2 * h)
        scale = fd.abs().max()
        assert scale > 0
        err = (jac[:, j] - fd).abs().max() / scale
        assert err < 1e-6, (p, err.item())


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "torch.func"])
@pytest.mark.parametrize("n_tr, fixed", [(97, None), (120, {})])
def test_mt_derivative_modes_agree(n_tr, fixed, compiled):
    """Independent derivative routes of the MT steady state agree with reverse mode (autodiff
    of a block march): the CRB's Jacobian — the compiled CPU kernel, or forward mode by
    ``jvp`` + ``vmap`` (implicit differentiation of the periodic orbit) — and dual tensors (the
    ``jvp`` rule through another entry point). 97 TRs is prime: the two-level scan then has one
    step per block."""
    model = models.get("mt_hybrid_state", sequence=short_mt_sequence(n_tr), fixed=fixed)
    model.use_compiled_kernel = compiled
    point = dict(MT_POINT, B1=0.95) if fixed == {} else MT_POINT
    theta = model.theta_from_dict(point) * torch.tensor([[1.0], [1.1], [0.9]], dtype=torch.float64)
    jac = jacobian(model, theta).real                              # [N, T, P]
    gen = torch.Generator().manual_seed(3)
    weights = torch.randn(*jac.shape[:2], generator=gen, dtype=torch.float64)
    th = theta.clone().requires_grad_()
    (model.simulate(th).real * weights).sum().backward()
    torch.testing.assert_close(th.grad, torch.einsum("nt,ntp->np", weights, jac),
                               rtol=1e-8, atol=0)
    direction = theta * torch.randn(theta.shape, generator=gen, dtype=torch.float64)
    with fwAD.dual_level():
        tangent = fwAD.unpack_dual(model.simulate(fwAD.make_dual(theta, direction))).tangent
    expected = torch.einsum("ntp,np->nt", jac, direction)
    torch.testing.assert_close(tangent.real, expected, rtol=0,
                               atol=1e-12 * expected.abs().max().item())


# ---- input checks ------------------------------------------------------------------------------
def test_bad_inputs_are_refused():
    model = models.get("mt_hybrid_state")
    with pytest.raises(ModelError, match="unknown model"):
        models.get("nope")
    with pytest.raises(ModelError, match="unknown parameter 'T3'"):
        model.theta_from_dict({"T3": 1.0}, fill_defaults=True)
    with pytest.raises(ModelError, match="fixed"):
        model.theta_from_dict({"B1": 1.0}, fill_defaults=True)
    with pytest.raises(ModelError, match="outside its bounds"):
        model.theta_from_dict({"m0s": 0.9}, fill_defaults=True)
    with pytest.raises(ModelError, match="shape"):
        model.simulate(torch.ones(3, 2, dtype=torch.float64))
    bad = model.theta_from_dict({}, fill_defaults=True)
    bad[0, 1] = float("nan")
    with pytest.raises(ModelError, match="NaN"):
        model.simulate(bad)
    with pytest.raises(ModelError, match="needs a 'mt' sequence"):
        models.get("mt_hybrid_state", sequence=sequences.default_fisp_sequence())
    with pytest.raises(ModelError, match="unknown parameter"):
        models.get("fisp_mrf", fixed={"T3": 1.0})


def test_fixed_parameters_change_the_estimated_set():
    m = models.get("mt_hybrid_state", fixed={"B1": 1.0, "T1s": 1.0})
    assert m.parameters == ("m0s", "T1f", "T2f", "Rx", "T2s")
    full = models.get("mt_hybrid_state", fixed={})
    assert full.parameters[-1] == "B1"
    a = m.simulate(m.theta_from_dict({}, fill_defaults=True))
    b = full.simulate(full.theta_from_dict(dict(full.defaults, T1s=1.0, B1=1.0)))
    torch.testing.assert_close(a, b)
