"""The compiled CPU route of mt_generalized_bloch (crbnet.physics.models._gbloch_kernel) against
the tensor route (gbloch_steady_state: matrix exponentials, differentiated by torch.func) and
against finite differences."""

import math

import numpy as np
import pytest
import torch
from torch.func import jacfwd

from crbnet.physics import sequences as seqs
from crbnet.physics.models.mt_generalized_bloch import MTGeneralizedBloch
from crbnet.stats.crb import (
    _fisher_from_columns,
    _signal_and_jacobian,
    crb_details,
    signal_and_crb,
)


def _sequence() -> seqs.SegmentedSequence:
    """Two segments of 20 pulses: an inversion pulse first, zero flips, a negative flip, a
    second inversion pulse mid-segment, pulse durations from 0.1 to 1 ms."""
    rng = np.random.default_rng(3)
    alpha = rng.uniform(0.1, 1.4, (2, 20))
    alpha[:, 0] = math.pi
    alpha[0, 4:8] = 0.0
    alpha[1, 12:14] = 0.0
    alpha[1, 9] = -0.7
    trf = rng.uniform(1e-4, 1e-3, (2, 20))
    inversion = np.zeros((2, 20), dtype=bool)
    inversion[:, 0] = True
    inversion[1, 15] = True
    return seqs.SegmentedSequence(alpha=alpha, TRF=trf, TR=3.5e-3, inversion=inversion)


def _model(fixed=None, table_r2sl: bool = False):
    """Lorentzian (R2sl = 1/T2s exactly), or the Gaussian line, whose tabulated R2sl depends
    on α, TRF, B1 and T2s, so that B1 and T2s act through R2sl too (the kernel reads the table
    through numba, the tensor route through torch: the same interpolant)."""
    return MTGeneralizedBloch(_sequence(), fixed=fixed,
                              lineshape="gaussian" if table_r2sl else "lorentzian")


def _theta(model, n: int = 3, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    lo = torch.tensor([r[0] for r in model.train_ranges.values()], dtype=torch.float64)
    hi = torch.tensor([r[1] for r in model.train_ranges.values()], dtype=torch.float64)
    theta = lo + (hi - lo) * torch.rand(n, len(lo), generator=gen, dtype=torch.float64)
    if "omega0" in model.parameters:                # well off resonance in one voxel
        theta[0, model.parameters.index("omega0")] = 0.7 * math.pi / model.sequence.TR
    return theta


def _tensor_route(model, theta):
    """Signal [N, T] and Jacobian [P, N, T] of the tensor route by torch.func.jacfwd."""
    model.use_compiled_kernel = False
    try:
        signal = model.simulate(theta)
        jac = jacfwd(lambda th: torch.view_as_real(model.simulate(th, check=False)))(theta)
    finally:
        model.use_compiled_kernel = True
    jac = torch.einsum("ntcmp->pntc", jac)           # voxels are independent: m = n
    return signal, torch.view_as_complex(jac.contiguous())


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("table", [False, True], ids=["lorentzian", "Gaussian table R2sl"])
def test_signal_matches_tensor_route(table):
    # With a tabulated R2sl, a signal alone interpolates R2sl without its derivatives.
    model = _model(table_r2sl=table)
    theta = _theta(model, 4)
    fast = model.simulate(theta)
    model.use_compiled_kernel = False
    reference = model.simulate(theta)
    model.use_compiled_kernel = True
    assert fast.dtype == torch.complex128 and fast.shape == reference.shape
    assert _rel(fast, reference) < 1e-12


@pytest.mark.parametrize("fixed, table", [(None, False), (None, True),
                                         ({"B1": 0.9, "omega0": 40.0}, False),
                                         ({"T1s": 0.5, "omega0": 0.0}, True)],
                         ids=["lorentzian", "Gaussian table R2sl", "B1 omega0 fixed", "T1s fixed"])
def test_jacobian_matches_tensor_route(fixed, table):
    model = _model(fixed, table)
    theta = _theta(model)
    signal, columns = model.explicit_signal_and_jacobian(theta)
    ref_signal, ref_columns = _tensor_route(model, theta)
    assert columns.shape == (model.n_parameters, 3, model.n_timepoints)
    assert _rel(signal, ref_signal) < 1e-12
    for j, name in enumerate(model.parameters):
        # R2sl (1e4 .. 1e5 /s) makes the T2s column ill-conditioned in both routes: a
        # derivative through a mode that decays by up to e^-50 within a pulse.
        tol = (1e-9 if table else 1e-8) if name == "T2s" else 1e-11
        assert _rel(columns[j], ref_columns[j]) < tol, name


def test_jacobian_matches_finite_differences():
    model = _model(table_r2sl=True)
    theta = _theta(model, 2, seed=1)
    _, columns = model.explicit_signal_and_jacobian(theta)
    for j, name in enumerate(model.parameters):
        lo, hi = model.train_ranges[name]
        step = 1e-5 * (hi - lo)
        d = torch.zeros_like(theta)
        d[:, j] = step
        fd = (model.simulate(theta + d) - model.simulate(theta - d)) / (2 * step)
        assert _rel(columns[j], fd) < 1e-6, name


@pytest.mark.parametrize("fixed", [None, {"B1": 1.1, "omega0": -30.0}])
def test_fisher_and_crb_match_explicit_jacobian(fixed):
    model = _model(fixed, table_r2sl=True)
    theta = _theta(model)
    F = model.explicit_fisher_information(theta)
    signal, columns = _tensor_route(model, theta)
    reference = _fisher_from_columns(columns, signal)
    P = model.n_parameters
    assert F.shape == (3, P + 2, P + 2)
    scale = reference.diagonal(dim1=-2, dim2=-1).sqrt()
    norm = scale[:, :, None] * scale[:, None, :]
    # 1e-9: the T2s column's conditioning (see above); the other entries agree to ~1e-15
    assert ((F - reference).abs() / norm).max() < 1e-9
    fast = crb_details(model, theta).variance
    model.use_compiled_kernel = False
    try:
        assert model.explicit_fisher_information(theta) is None
        slow = crb_details(model, theta).variance
    finally:
        model.use_compiled_kernel = True
    assert torch.isfinite(fast).all()
    # The Fisher matrix's condition (up to ~1e11 here) amplifies the T2s column's 1e-9.
    assert ((fast - slow).abs() / slow).max() < 1e-6


def test_signal_and_crb_from_one_pass():
    model = _model({"omega0": 0.0}, table_r2sl=True)
    theta = _theta(model)
    signal, result = signal_and_crb(model, theta)
    assert model.explicit_signal_and_fisher(theta) is not None
    assert signal.dtype == torch.complex128
    assert _rel(signal, model.simulate(theta)) < 1e-14
    assert torch.allclose(result.variance, crb_details(model, theta).variance, rtol=1e-12,
                          atol=0)
    assert model.explicit_signal_and_fisher(theta.float()) is None


def test_inputs_that_the_kernel_does_not_take_and_sizes():
    model = _model()
    theta = _theta(model, 2)
    assert model.explicit_signal_and_jacobian(theta.float()) is None
    assert model.explicit_fisher_information(theta.clone().requires_grad_()) is None
    single = model.simulate(theta.float()[:1])
    assert single.dtype == torch.complex64 and single.shape == (1, model.n_timepoints)
    assert _rel(single, model.simulate(theta[:1]).to(torch.complex64)) < 1e-6
    empty = model.simulate(theta[:0])
    assert empty.shape == (0, model.n_timepoints)
    F = model.explicit_fisher_information(theta[:0])
    assert F is not None and F.shape == (0, model.n_parameters + 2, model.n_parameters + 2)
    signal, columns = _signal_and_jacobian(model, theta[:1])
    assert signal.shape == (1, model.n_timepoints)
    assert columns.shape == (model.n_parameters, 1, model.n_timepoints)


def _generator6(p: np.ndarray, alpha: float, trf: float, r2: float, d_t2s: float,
                d_b1: float) -> np.ndarray:
    """The pulse's affine 6 × 6 generator written out again, as a function of the kernel's
    eight directions p = (m0s, R1f, R2f, Rx, R1s, T2s, B1, ω0), with R2sl linear in T2s and B1
    around p's values (slopes d_t2s, d_b1) so that its derivatives are known."""
    m0s, R1f, R2f, Rx, R1s, T2s, B1, w0 = p
    R2s = r2 + d_t2s * (T2s - 1e-5) + d_b1 * (B1 - 0.9)
    w = B1 * alpha / trf
    m0f = 1 - m0s
    return np.array([
        [-R2f, -w0, w, 0, 0, 0],
        [w0, -R2f, 0, 0, 0, 0],
        [-w, 0, -R1f - Rx * m0s, 0, Rx * m0f, R1f * m0f],
        [0, 0, 0, -R2s, w, 0],
        [0, 0, Rx * m0s, -w, -R1s - Rx * m0f, R1s * m0s],
        [0, 0, 0, 0, 0, 0]], dtype=float)


@pytest.mark.parametrize("alpha, trf, r2", [(0.41, 1e-4, 1.1e4), (math.pi, 1e-4, 6e4),
                                            (1.2, 5e-4, 1.5e4), (0.5, 1e-3, 2e5),
                                            (-0.7, 1e-3, 4e4), (1e-4, 5e-4, 1.2e4)],
                         ids=["median", "short pi", "500us", "stiff Lorentzian", "negative",
                              "tiny"])
def test_pulse_exponentials_match_scipy(alpha, trf, r2):
    """Pass 1's matrix exponential (Taylor, scaling and squaring) and pass 2's pulse applied to
    a state with its Fréchet derivatives (Taylor on the vector, substeps) against scipy's expm
    and expm_frechet, the derivatives of an independently written generator."""
    from scipy.linalg import expm, expm_frechet

    from crbnet.physics.models import _gbloch_kernel as kernel

    kernel._load()
    p = np.array([0.2, 1.0, 15.0, 30.0, 2.0, 1e-5, 0.9, 120.0])
    d_t2s, d_b1 = -1e9, 3e3
    dirs = np.arange(8)
    M, dMp = np.empty((5, 6)), np.empty((15, 8))
    kernel._pulse_generator(p, alpha, trf, r2, d_t2s, d_b1, dirs, M, dMp)
    G = _generator6(p, alpha, trf, r2, d_t2s, d_b1)
    assert np.array_equal(M, G[:5])
    E = np.empty((4, 5))                # rows and columns xf, yf, zf, zs, then the offset
    kernel._pulse_exp(M, trf, np.empty((6, 5, 6)), E)
    reference = expm(G * trf)
    reduced = reference[np.ix_([0, 1, 2, 4], [0, 1, 2, 4, 5])]
    # (both sides round off: up to ~1e-14 where R2sl·TRF = 200)
    assert np.abs(E - reduced).max() < 1e-13 * np.abs(reference).max()
    u = np.array([0.3, -0.2, 0.6, 0.05])
    state = np.array([u[0], u[1], u[2], 0.0, u[3], 1.0])
    out, d = np.empty(5), np.empty((5, 8))
    kernel._pulse_vec(M, dMp, 8, trf, u, np.empty(15), np.empty((15, 8)), d, np.empty((5, 8)),
                      out)
    assert np.abs(out - (reference @ state)[:5]).max() < 1e-13
    for j in range(8):
        step = np.zeros(8)
        step[j] = 1.0          # the generator is affine in each direction: exact difference
        dG = _generator6(p + step, alpha, trf, r2, d_t2s, d_b1) - G
        frechet = expm_frechet(G * trf, dG * trf, compute_expm=False) @ state
        size = np.abs(dG).max() * trf
        assert np.abs(d[:, j] - frechet[:5]).max() < 1e-13 * size, kernel.DIRECTIONS[j]


def test_taylor_degree_table_is_the_stated_bound():
    """_DEGREE_NU[m] is the largest ν with ν^m/m!/(1 − ν/(m+1)) ≤ 2⁻⁵³ (the truncation
    bound of pass 2's Taylor series, tangent included)."""
    from crbnet.physics.models import _gbloch_kernel as kernel

    def bound(nu, m):
        return math.exp(m * math.log(nu) - math.lgamma(m + 1)) / (1 - nu / (m + 1))

    for m in range(5, 45):
        nu = kernel._DEGREE_NU[m]
        assert bound(nu, m) <= 2.0 ** -53 < bound(nu * 1.001, m)
    assert kernel._DEGREE_NU[40] >= kernel._SUBSTEP      # a substep never needs more


def test_r2sl_values_without_derivatives_are_the_same_values():
    from crbnet.physics import r2sl

    seq = _sequence()
    B1 = np.array([0.7, 1.0, 1.3])
    T2s = np.array([6e-6, 12e-6, 24e-6])
    table = r2sl.get_table("super_lorentzian")
    full = r2sl.r2sl_for_pulses(table, seq.alpha.ravel(), seq.TRF.ravel(), B1, T2s)
    values = r2sl.r2sl_for_pulses(table, seq.alpha.ravel(), seq.TRF.ravel(), B1, T2s,
                                  derivatives=False)
    np.testing.assert_array_equal(values[0], full[0])
    assert (full[1] != 0).any() and not values[1].any() and not values[2].any()
