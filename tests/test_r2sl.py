"""Lineshapes, the generalized-Bloch IDE, the linearized R2sl and its table (docs/physics.md,
"The semi-solid pool: lineshapes and the linearized R2sl")."""

import math
from fractions import Fraction

import mpmath
import numpy as np
import pytest
import torch
from scipy.integrate import quad

from crbnet.errors import InputError
from crbnet.physics import lineshapes, r2sl_table
from crbnet.physics.r2sl import (R2slDomainError, R2slGridSpec, build_table, get_table,
                                 greens_integrals, r2sl_exact, r2sl_scalar_kernel, r2sl_torch,
                                 rho_exact, rho_from_w, solve_ide, w_bloch, OmegaSeries)
from crbnet.physics.r2sl_kernels import evaluate_numba

ZETA0 = 1.0 / math.sqrt(3.0)
T2S = 12e-6
# (TRF, α) of the published single-pulse comparison (T2s = 12 µs, on resonance).
PULSES = ((100e-6, math.pi), (300e-6, math.pi), (500e-6, math.pi), (100e-6, math.pi / 2),
          (500e-6, math.pi / 2))
# A small domain (θ ≤ π, τ ∈ [14, 40]) whose table builds in well under a second.
SMALL = R2slGridSpec(TRF_min=2e-4, TRF_max=4e-4, T2s_min=10e-6, T2s_max=14e-6,
                     alpha_max=math.pi, B1_max=1.0, n_x=25, n_u=25)


@pytest.fixture(scope="module")
def small_table():
    table, counts = build_table(SMALL)
    assert counts["no_root"] == 0
    return table


def _random_points(spec, n, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.uniform(spec.TRF_min, spec.TRF_max, n), rng.uniform(-spec.alpha_max,
                                                                       spec.alpha_max, n),
            rng.uniform(0.0, spec.B1_max, n), rng.uniform(spec.T2s_min, spec.T2s_max, n))


def _quad(f, a, b):
    return quad(f, a, b, epsabs=0, epsrel=1e-13, limit=500)[0]


# ---- lineshapes ---------------------------------------------------------------------------
@pytest.mark.parametrize("kappa", [0.0, 0.5, 3.0, 20.0, 120.0, 300.0])
def test_superlorentzian_greens_function_matches_quad(kappa):
    f = lambda z: math.exp(-kappa ** 2 * (3 * z * z - 1) ** 2 / 8)      # noqa: E731
    reference = _quad(f, 0, ZETA0) + _quad(f, ZETA0, 1)
    assert lineshapes.greens_superlorentzian(kappa) == pytest.approx(reference, rel=5e-13)


def test_greens_functions_registry_and_closed_forms():
    kappa = np.array([0.0, 0.7, 4.0])
    assert np.allclose(lineshapes.greens_function("lorentzian")(kappa), np.exp(-kappa),
                       rtol=1e-15)
    assert np.allclose(lineshapes.greens_function("gaussian")(-kappa), np.exp(-kappa ** 2 / 2),
                       rtol=1e-15)
    assert lineshapes.greens_superlorentzian(kappa).shape == (3,)
    with pytest.raises(InputError, match="unknown lineshape 'voigt'"):
        lineshapes.get_lineshape("voigt")


@pytest.mark.parametrize("delta", [1e2, 1e4, 3e5])
def test_superlorentzian_absorption_matches_quad(delta):
    x = delta * T2S
    f = lambda z: math.exp(-2 * (x / (3 * z * z - 1)) ** 2) / abs(3 * z * z - 1)  # noqa: E731
    reference = math.sqrt(2 / math.pi) * T2S * (_quad(f, 0, ZETA0) + _quad(f, ZETA0, 1))
    assert lineshapes.lineshape_superlorentzian(delta, T2S) == pytest.approx(reference,
                                                                             rel=1e-9)
    assert np.isinf(lineshapes.lineshape_superlorentzian(0.0, T2S))


@pytest.mark.parametrize("name", ["lorentzian", "gaussian"])
def test_absorption_lineshapes_are_normalized_fourier_pairs(name):
    g = lineshapes.get_lineshape(name)
    upper = np.inf if name == "lorentzian" else 40 / T2S
    area = 2 * quad(lambda d: float(g.absorption(d, T2S)), 0, upper, epsabs=0, epsrel=1e-11,
                    limit=500)[0]
    assert area == pytest.approx(1.0, rel=1e-9)
    # g(Δ) = (T2s/π) ∫₀^∞ G(κ) cos(Δ T2s κ) dκ at one Δ.
    delta = 0.8 / T2S
    transform = T2S / math.pi * quad(lambda k: float(g.greens(k)) * math.cos(0.8 * k), 0, 60,
                                     epsabs=0, epsrel=1e-12, limit=500)[0]
    assert float(g.absorption(delta, T2S)) == pytest.approx(transform, rel=1e-9)


def test_graham_published_numbers_and_long_pulse_limit():
    z = [math.exp(-lineshapes.saturation_rate_graham("super_lorentzian", a / trf, T2S, TRF=trf)
                  * trf) for trf, a in PULSES]
    assert np.round(z, 2).tolist() == [0.04, 0.19, 0.31, 0.46, 0.75]
    # A long pulse approaches the continuous-wave rate π ω1² g(Δ) (Lorentzian: within T2s/TRF).
    omega1 = 300.0
    for delta in (0.0, 2e4):
        cw = lineshapes.saturation_rate_graham("lorentzian", omega1, T2S, delta=delta)
        pulsed = lineshapes.saturation_rate_graham("lorentzian", omega1, T2S, delta,
                                                   TRF=1000 * T2S)
        assert pulsed == pytest.approx(cw, rel=2e-3)
    with pytest.raises(InputError):
        lineshapes.saturation_rate_graham("gaussian", omega1, T2S, TRF=-1.0)


# ---- the IDE and the root find ------------------------------------------------------------
def test_greens_integrals_match_quad():
    integrals = greens_integrals("super_lorentzian")
    G = lineshapes.greens_superlorentzian
    for kappa in (0.3, 7.0, 150.0):
        assert integrals.K(kappa) == pytest.approx(_quad(G, 0, kappa), rel=1e-12)
        k2 = _quad(lambda v: (kappa - v) * G(v), 0, kappa)
        assert integrals.K2(kappa) == pytest.approx(k2, rel=1e-12)


def _series_coefficients(name, n):
    """Taylor coefficients of G(κ) in κ² (exact rationals → mpmath)."""
    out = []
    for k in range(n):
        if name == "gaussian":
            c = Fraction(-1, 2) ** k / math.factorial(k)
        else:                     # ∫₀¹ (3ζ²−1)^(2k) dζ, expanded and integrated exactly
            moment = sum(Fraction(math.comb(2 * k, i) * 3 ** i * (-1) ** i, 2 * i + 1)
                         for i in range(2 * k + 1))
            c = Fraction(-1, 8) ** k / math.factorial(k) * moment
        out.append(mpmath.mpf(c.numerator) / c.denominator)
    return out


def _z_power_series(name, Omega, kappa, n=400):
    """z(κ) of the IDE from its exact power series (mpmath, 60 digits): with z = Σ a_m κ^m,
    ∫₀^κ (κ−s)^(2j) s^m ds = (2j)! m!/(2j+m+1)! κ^(2j+m+1) gives a recursion for a_m."""
    with mpmath.workdps(60):
        g = _series_coefficients(name, n // 2 + 1)
        fact = [mpmath.factorial(i) for i in range(n + 2)]
        a = [mpmath.mpf(1)] + [mpmath.mpf(0)] * n
        omega2 = mpmath.mpf(Omega) ** 2
        for q in range(n):
            total = mpmath.mpf(0)
            for j in range(0, q // 2 + 1):
                m = q - 1 - 2 * j
                if m < 0:
                    break
                total += g[j] * a[m] * fact[2 * j] * fact[m]
            a[q + 1] = -omega2 * total / fact[q] / (q + 1)
        return float(sum(a[m] * mpmath.mpf(kappa) ** m for m in range(n + 1)))


@pytest.mark.parametrize("name", ["super_lorentzian", "gaussian"])
def test_ide_solver_matches_exact_power_series(name):
    for kappa, theta, terms in ((4.0, 1.5 * math.pi, 160), (10.0, 1.5 * math.pi, 400),
                                (7.0, 0.4, 260)):
        Omega = theta / kappa
        grid, w = solve_ide(name, Omega, kappa)
        z = 1 - Omega ** 2 * w
        assert z[-1] == pytest.approx(_z_power_series(name, Omega, kappa, terms), abs=1e-9)
    middle = len(grid) // 2
    assert z[middle] == pytest.approx(_z_power_series(name, Omega, grid[middle], 160), abs=1e-9)


def test_ide_solver_matches_laplace_inversion_for_long_weak_pulses():
    """Gaussian line: W(p) = Ĝ/(p (p + Ω² Ĝ)), Ĝ(p) = √(π/2) e^{p²/2} erfc(p/√2), inverted by
    Talbot's method (mpmath) — independent of the time-domain solver."""
    def g_hat(p):
        return mpmath.sqrt(mpmath.pi / 2) * mpmath.exp(p * p / 2) * mpmath.erfc(p / mpmath.sqrt(2))

    for tau, theta in ((200.0, 0.3), (50.0, 1.0)):
        Omega = theta / tau
        with mpmath.workdps(30):
            w = mpmath.invertlaplace(lambda p: g_hat(p) / (p * (p + Omega ** 2 * g_hat(p))),
                                     tau, method="talbot")
        _, w_ide = solve_ide("gaussian", Omega, tau)
        assert w_ide[-1] == pytest.approx(float(w), rel=1e-10)
        rho_direct, _ = rho_from_w(float(w), tau, Omega)
        assert rho_exact("gaussian", tau, theta) == pytest.approx(rho_direct[0], rel=1e-9)


@pytest.mark.parametrize("tau,theta", [(4.0, 1.5 * math.pi), (8.3, math.pi), (50.0, 0.5),
                                       (200.0, 1e-3), (30.0, 0.0)])
def test_lorentzian_chain_gives_one_over_T2s(tau, theta):
    assert rho_exact("lorentzian", tau, theta) == pytest.approx(1.0, rel=1e-10)


def test_bloch_w_forms_agree_and_match_closed_form():
    """The three evaluation branches of w_B against z_B = e^{−ρτ/2}(cosh(sτ/2) + ρ/s sinh(sτ/2))
    in complex arithmetic (where it has no cancellation)."""
    tau, Omega = 10.0, 0.25
    for rho in (0.0, 0.3, 0.5 - 1e-3, 0.5, 0.5 + 1e-3, 0.9, 5.0):
        s = np.sqrt(complex(rho * rho - 4 * Omega * Omega))
        z = (np.exp(-rho * tau / 2) * (np.cosh(s * tau / 2) + rho / s * np.sinh(s * tau / 2))
             if abs(s) > 0 else np.exp(-rho * tau / 2) * (1 + rho * tau / 2))
        assert w_bloch(rho, tau, Omega) == pytest.approx((1 - z.real) / Omega ** 2, rel=1e-11)
    # Ω → 0: w_B → τ/ρ − (1 − e^{−ρτ})/ρ² (the Ω = 0 limit the table uses).
    assert w_bloch(0.7, tau, 0.0) == pytest.approx(tau / 0.7 - (1 - math.exp(-7)) / 0.49,
                                                   rel=1e-14)


def test_root_find_reports_its_corner_cases():
    tau, Omega = 20.0, 1.5 * math.pi / 20.0
    top = w_bloch(np.geomspace(1e-3, 10, 2000), tau, Omega).max()
    undamped = w_bloch(0.0, tau, Omega)
    assert undamped < top
    target = 0.5 * (undamped + top)
    rho, report = rho_from_w(np.array([target, 1.1 * top]), tau, Omega)
    assert not report.no_root[0] and report.no_root[1]
    assert report.several_roots[0]              # θ > π: w_B rises before it falls
    assert w_bloch(rho[0], tau, Omega) == pytest.approx(target, rel=1e-12)
    left, right = w_bloch(rho[0] * (1 - 1e-6), tau, Omega), w_bloch(rho[0] * (1 + 1e-6), tau,
                                                                    Omega)
    assert left > right                         # the largest root: the falling branch
    best = w_bloch(rho[1], tau, Omega)                 # no root: the closest fit, max w_B
    assert best >= top and best >= w_bloch(rho[1] * np.array([0.999, 1.001]), tau,
                                           Omega).max()


def test_published_single_pulse_numbers():
    """Isolated semi-solid pool, T2s = 12 µs, z after one rectangular pulse."""
    z_gbloch, z_bloch = [], []
    for trf, alpha in PULSES:
        tau, Omega = trf / T2S, alpha * T2S / trf
        _, w = solve_ide("super_lorentzian", Omega, tau)
        z_gbloch.append(1 - Omega ** 2 * w[-1])
        # the linearized model reproduces it: Bloch with ρ = R2sl T2s
        rho = r2sl_exact("super_lorentzian", trf, alpha, 1.0, T2S) * T2S
        assert 1 - Omega ** 2 * w_bloch(rho, tau, Omega) == pytest.approx(z_gbloch[-1],
                                                                          abs=1e-12)
        z_bloch.append(1 - Omega ** 2 * w_bloch(1.0, tau, Omega))   # Lorentzian = Bloch
    assert np.round(z_gbloch, 2).tolist() == [-0.36, 0.03, 0.22, 0.36, 0.74]
    # Lorentzian: the IDE equals the Bloch closed form with R2 = 1/T2s.
    for (trf, alpha), expected in zip(PULSES, z_bloch):
        tau, Omega = trf / T2S, alpha * T2S / trf
        _, w = solve_ide("lorentzian", Omega, tau)
        assert 1 - Omega ** 2 * w[-1] == pytest.approx(expected, abs=1e-12)


def test_omega_series_matches_direct_solve():
    series = OmegaSeries("super_lorentzian", 40.0, 0.05)
    index = np.array([100, 400, 800])
    for theta in (0.0, 1.0, math.pi, 1.5 * math.pi):
        Omega = theta / (index * 0.05)
        w = series.w(index, Omega)
        for k, i in enumerate(index):
            _, direct = solve_ide("super_lorentzian", Omega[k], i * 0.05)
            assert w[k] == pytest.approx(direct[-1], rel=1e-11)


# ---- the table ----------------------------------------------------------------------------
def test_table_interpolation_error_on_random_points(small_table):
    TRF, alpha, B1, T2s = _random_points(SMALL, 12, seed=1)
    R = small_table.evaluate(TRF, alpha, B1, T2s)[0]
    exact = [r2sl_exact("super_lorentzian", *p) for p in zip(TRF, alpha, B1, T2s)]
    assert np.max(np.abs(R / exact - 1)) < 2e-8      # measured 3e-9 on this 25 × 25 grid


def test_table_derivatives_are_those_of_the_interpolant(small_table):
    # Points at least 1 % inside the domain, so that the differences stay in it.
    inner = R2slGridSpec(TRF_min=2.02e-4, TRF_max=3.96e-4, T2s_min=10.1e-6, T2s_max=13.9e-6,
                         alpha_max=0.99 * math.pi, B1_max=0.99)
    TRF, alpha, B1, T2s = _random_points(inner, 20, seed=2)
    B1 = B1 + 0.01
    R, *derivatives = small_table.evaluate(TRF, alpha, B1, T2s)
    point = dict(TRF=TRF, alpha=alpha, B1=B1, T2s=T2s)
    for name, analytic in zip(("T2s", "B1", "TRF", "alpha"), derivatives):
        step = 1e-5 * np.abs(point[name]) + (1e-7 if name == "alpha" else 0.0)
        up, down = dict(point), dict(point)
        up[name] = point[name] + step
        down[name] = point[name] - step
        fd = (small_table.evaluate(**up)[0] - small_table.evaluate(**down)[0]) / (2 * step)
        # relative, or (where R2sl hardly depends on it) in d log R / d log x, to 1e-7
        scale = R / np.maximum(np.abs(point[name]), 1e-3)
        assert np.all(np.abs(fd - analytic) <= 1e-7 * (np.abs(analytic) + scale))


def test_alpha_zero_is_smooth_and_finite(small_table):
    R, dT2s, dB1, dTRF, dalpha = small_table.evaluate(3e-4, np.array([-1e-7, 0.0, 1e-7]), 0.9,
                                                      12e-6)
    assert np.all(np.isfinite(R)) and R[0] == pytest.approx(R[2], rel=1e-15)
    assert dalpha[1] == 0.0 and dalpha[0] == pytest.approx(-dalpha[2], rel=1e-12)


def test_numpy_numba_torch_agree(small_table):
    points = _random_points(SMALL, 50, seed=3)
    numpy_values = small_table.evaluate(*points)
    numba_values = evaluate_numba(small_table, *points)
    for a, b in zip(numpy_values, numba_values):
        assert np.allclose(a, b, rtol=1e-13, atol=0)
    tensors = [torch.tensor(p, requires_grad=True) for p in points]
    R = r2sl_torch(small_table, *tensors)
    assert np.allclose(R.detach().numpy(), numpy_values[0], rtol=1e-13, atol=0)
    grads = torch.autograd.grad(R.sum(), tensors)
    order = {"TRF": 3, "alpha": 4, "B1": 2, "T2s": 1}
    for name, grad in zip(("TRF", "alpha", "B1", "T2s"), grads):
        assert np.allclose(grad.numpy(), numpy_values[order[name]], rtol=1e-11, atol=0)


def test_torch_gradcheck_jvp_and_reverse_over_forward(small_table):
    TRF, alpha, B1, T2s = (torch.tensor(p) for p in _random_points(SMALL, 4, seed=4))

    def f(trf, a, b1, t2s):
        return r2sl_torch(small_table, trf, a, b1, t2s)

    def scaled(trf_us, a, b1, t2s_us):            # R2sl T2s of times in µs: all O(1)..O(100)
        return f(trf_us * 1e-6, a, b1, t2s_us * 1e-6) * t2s_us * 1e-6

    inputs = tuple(v.clone().requires_grad_() for v in (TRF * 1e6, alpha, B1, T2s * 1e6))
    assert torch.autograd.gradcheck(scaled, inputs, eps=1e-6, atol=1e-8, rtol=1e-6)
    tangent = torch.ones_like(alpha)
    _, jvp_alpha = torch.func.jvp(lambda a: f(TRF, a, B1, T2s), (alpha,), (tangent,))
    assert np.allclose(jvp_alpha.numpy(), small_table.evaluate(
        TRF.numpy(), alpha.numpy(), B1.numpy(), T2s.numpy())[4], rtol=1e-11)
    # A Jacobian in (α, TRF) by forward mode under vmap, differentiated in reverse mode.
    alpha_r = alpha.clone().requires_grad_()

    def jac(a):
        return torch.func.vmap(torch.func.jacfwd(lambda x: f(TRF[0], x, B1[0], T2s[0])))(a)

    jac(alpha_r).sum().backward()
    h = 1e-6
    second = (jac(alpha + h) - jac(alpha - h)) / (2 * h)
    assert np.allclose(alpha_r.grad.numpy(), second.numpy(), rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_torch_float32_and_device(small_table, device):
    points = _random_points(SMALL, 10, seed=5)
    R = r2sl_torch(small_table, *(torch.tensor(p, dtype=torch.float32, device=device)
                                  for p in points))
    assert R.dtype == torch.float32 and R.device.type == device
    assert np.allclose(R.cpu().numpy(), small_table.evaluate(*points)[0], rtol=2e-5)


def test_outside_the_domain(small_table):
    with pytest.raises(R2slDomainError, match=r"TRF = 0.0005 s outside \[0.0002, 0.0004\]"):
        small_table.evaluate(5e-4, 1.0, 1.0, 12e-6)
    with pytest.raises(R2slDomainError, match="alpha"):
        small_table.evaluate(3e-4, -3.5, 1.0, 12e-6)
    with pytest.raises(R2slDomainError, match="B1"):
        r2sl_torch(small_table, torch.tensor(3e-4), torch.tensor(1.0), torch.tensor(1.2),
                   torch.tensor(12e-6))
    assert issubclass(R2slDomainError, InputError)
    # Under a torch.func transform the values cannot be inspected: NaN marks the point.
    out = torch.func.vmap(lambda t: r2sl_torch(small_table, t, torch.tensor(1.0),
                                               torch.tensor(1.0), torch.tensor(12e-6)))(
        torch.tensor([3e-4, 5e-4], dtype=torch.float64))
    assert torch.isfinite(out[0]) and torch.isnan(out[1])
    kernel = r2sl_scalar_kernel()
    assert all(math.isnan(v) for v in kernel(*small_table.kernel_arrays(), 5e-4, 1.0, 1.0,
                                             12e-6))


def test_lorentzian_table_is_exact():
    spec = R2slGridSpec(lineshape="lorentzian", n_x=9, n_u=9)
    table, counts = build_table(spec)
    R, dT2s, dB1, dTRF, dalpha = table.evaluate(3e-4, 2.0, 1.1, 7e-6)
    assert R == pytest.approx(1 / 7e-6, rel=1e-15) and dT2s == pytest.approx(-1 / 7e-6 ** 2)
    assert dB1 == 0 and dTRF == 0 and dalpha == 0 and counts["nodes"] == 0


# ---- the disk cache -----------------------------------------------------------------------
@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CRBNET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(r2sl_table, "_TABLES", {})
    calls = []
    original = r2sl_table.build_table

    def counting_build(spec):
        calls.append(spec)
        return original(spec)

    monkeypatch.setattr(r2sl_table, "build_table", counting_build)
    return tmp_path / "cache", calls


def test_cache_written_once_then_reused(fresh_cache):
    folder, calls = fresh_cache
    spec = R2slGridSpec(TRF_min=2e-4, TRF_max=3e-4, T2s_min=10e-6, T2s_max=12e-6, n_x=9, n_u=9)
    first = get_table(spec=spec)
    assert get_table(spec=spec) is first and len(calls) == 1
    files = list(folder.glob("r2sl-super_lorentzian-*.npz"))
    assert files == [r2sl_table.cache_path(spec)]
    r2sl_table._TABLES.clear()                       # a new process: read from disk
    second = get_table(spec=spec)
    assert len(calls) == 1 and np.array_equal(second.coefficients, first.coefficients)
    assert not list(folder.glob(".tmp-*"))


def test_corrupt_or_foreign_cache_is_rebuilt(fresh_cache):
    folder, calls = fresh_cache
    spec = R2slGridSpec(TRF_min=2e-4, TRF_max=3e-4, T2s_min=10e-6, T2s_max=12e-6, n_x=9, n_u=9)
    path = r2sl_table.cache_path(spec)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a zip file")
    table = get_table(spec=spec)
    assert len(calls) == 1 and np.all(np.isfinite(table.coefficients))
    # A well-formed file written for another spec under this name is not trusted either.
    other = R2slGridSpec(TRF_min=2e-4, TRF_max=3e-4, T2s_min=10e-6, T2s_max=12e-6, n_x=9,
                         n_u=11)
    r2sl_table._save(path, build_table(other)[0])
    r2sl_table._TABLES.clear()
    get_table(spec=spec)
    assert len(calls) == 2
    with np.load(path) as data:
        assert str(data["key"]) == spec.key()


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("CRBNET_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert r2sl_table.cache_dir() == tmp_path / "xdg" / "crbnet"
    monkeypatch.setenv("CRBNET_CACHE_DIR", str(tmp_path / "mine"))
    assert r2sl_table.cache_dir() == tmp_path / "mine"


def test_unwritable_cache_still_gives_a_table(fresh_cache, monkeypatch, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("a file where the cache folder would go")
    monkeypatch.setenv("CRBNET_CACHE_DIR", str(blocker / "cache"))
    _, calls = fresh_cache
    spec = R2slGridSpec(TRF_min=2e-4, TRF_max=3e-4, T2s_min=10e-6, T2s_max=12e-6, n_x=9, n_u=9)
    table = get_table(spec=spec)
    assert len(calls) == 1 and table.evaluate(2.5e-4, 1.0, 1.0, 11e-6)[0] > 0
