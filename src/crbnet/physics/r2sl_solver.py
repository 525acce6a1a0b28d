"""The exact linearized relaxation rate R2sl of the semi-solid pool (docs/physics.md, "The
semi-solid pool: lineshapes and the linearized R2sl").

Dimensionless throughout: κ = t/T2s, τ = TRF/T2s, Ω = B1 |α| T2s / TRF (so θ = Ωτ = B1 |α|),
ρ = R2sl T2s. The isolated pool's longitudinal magnetization under a rectangular pulse obeys
dz/dκ = −Ω² ∫₀^κ G(κ−κ′) z(κ′) dκ′ with z(0) = 1. Integrated once, with K(u) = ∫₀^u G and
K₂(u) = ∫₀^u K, and written for w = (1 − z)/Ω² (finite as Ω → 0, where w → K₂):

    w(κ) = K₂(κ) − Ω² ∫₀^κ K(κ − s) w(s) ds,                                        (V)

a Volterra equation of the second kind with a smooth kernel that vanishes on the diagonal.
Two independent solvers: :func:`solve_ide` marches (V) with the trapezoid rule (explicit, since
K(0) = 0) at steps h, h/2, h/4 and Richardson-extrapolates (error O(h⁶)); :class:`OmegaSeries`
expands w = Σₙ (−Ω²)ⁿ cₙ(κ), c₀ = K₂, cₙ = K ∗ cₙ₋₁ (all cₙ ≥ 0 since G > 0), which gives w for
every Ω at once on a fixed κ grid (used to build the table).

The two-state Bloch system with relaxation ρ has w_B(ρ) = ∫₀^τ e^{−ρu/2} sinh(qu)/q du,
q² = ρ²/4 − Ω² (:func:`w_bloch`); R2sl solves w_B(ρ) = w_IDE (:func:`rho_from_w`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numpy.polynomial import chebyshev as cheb

from crbnet.physics.lineshapes import greens_function

# Panels of the piecewise Chebyshev representation of G, K, K₂ (κ from 0 to 1024).
_PANEL_EDGES = np.concatenate([[0.0, 0.5], 2.0 ** np.arange(0, 11)])
_CHEB_DEGREE = 48
_GL32_NODES, _GL32_WEIGHTS = np.polynomial.legendre.leggauss(32)


@dataclass
class GreensIntegrals:
    """G(κ), K(κ) = ∫₀^κ G and K₂(κ) = ∫₀^κ K of one lineshape, as piecewise Chebyshev series
    (degree 48 on the panels [0, ½], [½, 1], [1, 2], ..., [512, 1024]; ~1e-15 relative)."""

    lineshape: str
    _series: list = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        greens = greens_function(self.lineshape)
        k_start, k2_start = 0.0, 0.0
        for a, b in zip(_PANEL_EDGES[:-1], _PANEL_EDGES[1:]):
            g = cheb.Chebyshev.interpolate(greens, _CHEB_DEGREE, domain=[a, b])
            k = g.integ(lbnd=a, k=k_start)
            k2 = k.integ(lbnd=a, k=k2_start)
            self._series.append((g, k, k2))
            k_start, k2_start = float(k(b)), float(k2(b))

    def _evaluate(self, kappa, which: int) -> np.ndarray:
        kappa = np.asarray(kappa, dtype=float)
        if np.any(kappa < 0) or np.any(kappa > _PANEL_EDGES[-1]):
            raise ValueError(f"κ outside [0, {_PANEL_EDGES[-1]}]")
        panel = np.clip(np.searchsorted(_PANEL_EDGES, kappa, side="right") - 1, 0,
                        len(self._series) - 1)
        out = np.empty(kappa.shape)
        for p in np.unique(panel):
            mask = panel == p
            out[mask] = self._series[p][which](kappa[mask])
        return out

    def G(self, kappa) -> np.ndarray:
        return self._evaluate(kappa, 0)

    def K(self, kappa) -> np.ndarray:
        return self._evaluate(kappa, 1)

    def K2(self, kappa) -> np.ndarray:
        return self._evaluate(kappa, 2)


_INTEGRALS: dict[str, GreensIntegrals] = {}


def greens_integrals(lineshape: str) -> GreensIntegrals:
    """The (per-process cached) :class:`GreensIntegrals` of ``lineshape``."""
    if lineshape not in _INTEGRALS:
        _INTEGRALS[lineshape] = GreensIntegrals(lineshape)
    return _INTEGRALS[lineshape]


def _richardson(levels: list[np.ndarray]) -> np.ndarray:
    """Extrapolate values at steps h, h/2, h/4 (errors in h², h⁴, ...) to h → 0."""
    first = [(4.0 * fine - coarse) / 3.0 for coarse, fine in zip(levels[:-1], levels[1:])]
    return (16.0 * first[1] - first[0]) / 15.0


def _march(K: np.ndarray, K2: np.ndarray, omega2: float, h: float) -> np.ndarray:
    """Trapezoid march of (V) on a uniform grid (w[0] = 0, K[0] = 0: explicit in w[m])."""
    n = len(K)
    w = np.zeros(n)
    reversed_K = K[::-1].copy()
    if n > 1:
        w[1] = K2[1]
    for m in range(2, n):
        # Σ_{j=1}^{m-1} K[m-j] w[j]; reversed_K[n-1-m+j] = K[m-j].
        w[m] = K2[m] - omega2 * h * np.dot(reversed_K[n - m:n - 1], w[1:m])
    return w


def solve_ide(lineshape: str, Omega: float, kappa_max: float,
              step: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """w(κ) = (1 − z(κ))/Ω² of the isolated pool on the grid κ = 0, h, ..., kappa_max.

    h = kappa_max / ceil(kappa_max / step); trapezoid marches at h, h/2, h/4, Richardson-
    extrapolated. Returns (kappa, w); z = 1 − Ω² w.
    """
    integrals = greens_integrals(lineshape)
    n = max(2, int(math.ceil(kappa_max / step)))
    levels = []
    for refine in (1, 2, 4):
        kappa = np.linspace(0.0, kappa_max, refine * n + 1)
        h = kappa[1]
        w = _march(integrals.K(kappa), integrals.K2(kappa), Omega * Omega, h)
        levels.append(w[::refine])
    return np.linspace(0.0, kappa_max, n + 1), _richardson(levels)


class OmegaSeries:
    """w(κ, Ω) = Σₙ (−Ω²)ⁿ cₙ(κ) on the grid κ = m h (m = 0..M), for every Ω at once.

    cₙ = K ∗ cₙ₋₁ by the trapezoid rule at h, h/2, h/4 (the end terms vanish: K(0) = cₙ(0) = 0),
    Richardson-extrapolated. ``n_terms`` = 34 converges for θ = Ωκ up to ~6 (the terms are
    bounded by θ²ⁿ κ²/(2n+2)!, since G ≤ 1).
    """

    def __init__(self, lineshape: str, kappa_max: float, step: float = 0.05,
                 n_terms: int = 34) -> None:
        integrals = greens_integrals(lineshape)
        self.n_points = int(math.ceil(kappa_max / step)) + 1
        self.step = step
        levels = []
        for refine in (1, 2, 4):
            kappa = np.arange(refine * (self.n_points - 1) + 1) * (step / refine)
            h = step / refine
            K = integrals.K(kappa)
            terms = [integrals.K2(kappa)]
            for _ in range(1, n_terms):
                terms.append(h * np.convolve(K, terms[-1])[:len(kappa)])
            levels.append(np.array(terms)[:, ::refine])
        self.coefficients = _richardson(levels)                   # [n_terms, M+1]

    @property
    def kappa(self) -> np.ndarray:
        return np.arange(self.n_points) * self.step

    def w(self, index: np.ndarray, Omega: np.ndarray) -> np.ndarray:
        """w at grid points ``index`` (κ = index · step) and Rabi frequencies ``Omega``."""
        c = self.coefficients[:, index]
        powers = (-np.asarray(Omega, dtype=float) ** 2) ** np.arange(len(c))[:, None]
        return np.sum(powers * c, axis=0)


def _exprel_integral(lam, tau: np.ndarray):
    """E(λ) = ∫₀^τ e^{λu} du = (e^{λτ} − 1)/λ (τ at λ = 0), real or complex λ."""
    x = lam * tau
    if np.iscomplexobj(x):
        small = np.abs(x) < 1e-8
        safe = np.where(small, 1.0, x)
        return np.where(small, tau * (1.0 + x / 2.0), tau * (np.exp(safe) - 1.0) / safe)
    small = np.abs(x) < 1e-300
    safe = np.where(small, 1.0, x)
    return np.where(small, tau, tau * np.expm1(safe) / safe)


def w_bloch(rho, tau, Omega) -> np.ndarray:
    """w_B = (1 − z_B)/Ω² of the two-state Bloch system with relaxation ρ ≥ 0 after time τ
    (all dimensionless, broadcast): ∫₀^τ e^{−ρu/2} sinh(qu)/q du, q² = ρ²/4 − Ω².

    Three forms, each without cancellation where it is used: |q|τ < ½, a Taylor series in q²
    (moments of e^{−ρu/2} by 32-point Gauss–Legendre); q² > 0, the divided difference of E over
    λ± = −ρ/2 ± q (with λ₊ = −Ω²/(ρ/2 + q)); q² < 0, Im E(−ρ/2 + iν)/ν.
    """
    rho, tau, Omega = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in
                                            (rho, tau, Omega)))
    q2 = 0.25 * rho * rho - Omega * Omega
    out = np.empty(rho.shape)
    series = np.abs(q2) * tau * tau < 0.25
    real = ~series & (q2 > 0)
    oscillating = ~series & (q2 <= 0)
    if np.any(series):
        r, t, a = rho[series], tau[series], q2[series]
        u = 0.5 * (1.0 + _GL32_NODES)[:, None] * t                 # nodes on [0, τ]
        damp = 0.5 * _GL32_WEIGHTS[:, None] * t * np.exp(-0.5 * r * u)
        total = np.zeros(r.shape)
        term = u.copy()                                             # u^(2k+1) q^(2k)/(2k+1)!
        for k in range(14):
            total += np.sum(damp * term, axis=0)
            term = term * a * u * u / ((2 * k + 2) * (2 * k + 3))
        out[series] = total
    if np.any(real):
        r, t, om = rho[real], tau[real], Omega[real]
        q = np.sqrt(q2[real])
        lam_plus = -(om * om) / (0.5 * r + q)
        lam_minus = -0.5 * r - q
        out[real] = (_exprel_integral(lam_plus, t) - _exprel_integral(lam_minus, t)) / (2 * q)
    if np.any(oscillating):
        nu = np.sqrt(-q2[oscillating])
        lam = -0.5 * rho[oscillating] + 1j * nu
        out[oscillating] = np.imag(_exprel_integral(lam, tau[oscillating])) / nu
    return out


# ρ values scanned for sign changes of w_B(ρ) − w before the bisection (0 and 1e-6..1e4).
_RHO_SCAN = np.concatenate([[0.0], np.geomspace(1e-6, 1e4, 400)])


@dataclass
class RootReport:
    """Where the root find had no exact root (the best fit was taken) or several roots."""

    no_root: np.ndarray
    several_roots: np.ndarray


def rho_from_w(w_target, tau, Omega) -> tuple[np.ndarray, RootReport]:
    """ρ with w_B(ρ; τ, Ω) = w_target, vectorized; the largest root where there are several.

    w_B(ρ) falls to 0 as ρ → ∞. For θ = Ωτ ≤ π it falls monotonically from
    (1 − cos θ)/Ω², so there is one root whenever the IDE saturates less than an undamped
    rotation. For larger θ, w_B first rises (damping slows the rotation past π back toward
    −1) and then falls: a target can then be met twice; the largest ρ is the root that continues
    the θ < π branch. Where the target exceeds max w_B (no Bloch system saturates as much), the ρ
    of the closest w_B is taken (refined to the maximum) and reported.
    """
    w_target, tau, Omega = (np.atleast_1d(np.asarray(v, dtype=float)) for v in
                            np.broadcast_arrays(w_target, tau, Omega))
    n = len(w_target)
    scan = _RHO_SCAN[:, None]
    residual = w_bloch(scan, tau[None, :], Omega[None, :]) - w_target[None, :]
    change = (residual[:-1] > 0) & (residual[1:] <= 0)
    several = np.sum(change | ((residual[:-1] < 0) & (residual[1:] >= 0)), axis=0) > 1
    has_root = np.any(change, axis=0)
    # Largest bracket [lo, hi] with residual(lo) > 0 >= residual(hi).
    last = len(_RHO_SCAN) - 2 - np.argmax(change[::-1], axis=0)
    best = np.argmax(residual, axis=0)                            # closest when no root
    lo = np.where(has_root, _RHO_SCAN[last], _RHO_SCAN[np.maximum(best - 1, 0)])
    hi = np.where(has_root, _RHO_SCAN[last + 1],
                  _RHO_SCAN[np.minimum(best + 1, len(_RHO_SCAN) - 1)])
    if np.any(has_root):
        lo[has_root], hi[has_root] = _bisect(lo[has_root], hi[has_root], w_target[has_root],
                                             tau[has_root], Omega[has_root])
    if np.any(~has_root):
        lo[~has_root] = _golden_max(lo[~has_root], hi[~has_root], tau[~has_root],
                                    Omega[~has_root])
        hi[~has_root] = lo[~has_root]
    rho = 0.5 * (lo + hi)
    return rho.reshape(n), RootReport(no_root=~has_root, several_roots=several)


def _bisect(lo, hi, w_target, tau, Omega, iterations: int = 100):
    """Bisection (w_B − target > 0 at lo, ≤ 0 at hi) to adjacent floating-point numbers."""
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        above = w_bloch(mid, tau, Omega) > w_target
        lo = np.where(above, mid, lo)
        hi = np.where(above, hi, mid)
        if np.all(np.nextafter(lo, hi) >= hi):
            break
    return lo, hi


def _golden_max(lo, hi, tau, Omega, iterations: int = 80):
    """argmax of w_B over [lo, hi] by golden-section search."""
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = lo.copy(), hi.copy()
    for _ in range(iterations):
        c = b - ratio * (b - a)
        d = a + ratio * (b - a)
        left = w_bloch(c, tau, Omega) > w_bloch(d, tau, Omega)
        b = np.where(left, d, b)
        a = np.where(left, a, c)
    return 0.5 * (a + b)


def rho_exact(lineshape: str, tau: float, theta: float, step: float = 0.05) -> float:
    """ρ = R2sl T2s at τ = TRF/T2s and θ = B1 |α| from a direct solve of the IDE."""
    Omega = theta / tau
    _, w = solve_ide(lineshape, Omega, tau, step)
    rho, _ = rho_from_w(w[-1], tau, Omega)
    return float(rho[0])


def r2sl_exact(lineshape: str, TRF: float, alpha: float, B1: float, T2s: float) -> float:
    """R2sl (1/s) from a direct solve (no table): TRF, T2s in s, α in rad, B1 relative."""
    if lineshape == "lorentzian":
        return 1.0 / T2s
    return rho_exact(lineshape, TRF / T2s, B1 * abs(alpha)) / T2s
