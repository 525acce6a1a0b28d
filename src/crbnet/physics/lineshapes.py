"""Lineshapes of the semi-solid pool: Green's functions G(κ), absorption lineshapes g(Δ), and
Graham's saturation rate, for the super-Lorentzian, Lorentzian and Gaussian lines.

κ = t / T2s is time in units of T2s. G is the free-induction decay of the pool's transverse
magnetization (G(0) = 1) and g(Δ) its Fourier transform, normalized so that ∫ g dΔ = 1
(Δ in rad/s, g in s/rad): g(Δ) = (T2s/π) ∫₀^∞ G(κ) cos(Δ T2s κ) dκ.

The super-Lorentzian line averages a Gaussian over the angle θ between the fibres and B0,
with ζ = cos θ and a = 3ζ² − 1: G(κ) = ∫₀¹ exp(−κ² a² / 8) dζ. For large κ its integrand is a
narrow peak at the magic angle ζ₀ = 1/√3 (width ≈ 1/(√3 κ) in ζ), so the integral is split at
ζ₀ and each side is cut into panels that grow geometrically away from it (16-point
Gauss–Legendre on each): agrees with adaptive quadrature to ~1e-14 up to κ = 3000.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from crbnet.errors import InputError

MAGIC_ZETA = 1.0 / math.sqrt(3.0)
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(16)
# g(Δ)'s integrand exp(−2x²/a²)/|a| rises from 0 like an essential singularity: 32 nodes.
_GL32_NODES, _GL32_WEIGHTS = np.polynomial.legendre.leggauss(32)
# Panel edges, in units of the peak width, measured from ζ₀: 0, 1, 2, 4, ..., 2^15.
_PANEL_STEPS = np.concatenate([[0.0], 2.0 ** np.arange(16)])


def _graded_panels(width: np.ndarray, length: float,
                   uniform: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Left and right edges [n, P] of panels from 0 to ``length`` that start ``width`` wide and
    double in size (the last one runs to ``length``); empty panels past ``length`` add 0.
    ``uniform`` > 0 adds the edges of that many equal panels (no panel is then longer)."""
    edges = np.minimum(width[:, None] * _PANEL_STEPS[None, :], length)
    parts = [edges, np.full((len(width), 1), length)]
    if uniform:
        parts.append(np.broadcast_to(np.linspace(0.0, length, uniform + 1), (len(width),
                                                                             uniform + 1)))
    edges = np.sort(np.concatenate(parts, axis=1), axis=1)
    return edges[:, :-1], edges[:, 1:]


def _integrate_around_magic_angle(integrand: Callable[[np.ndarray, np.ndarray], np.ndarray],
                                  scale: np.ndarray, width: np.ndarray,
                                  uniform: int = 0, fine: bool = False) -> np.ndarray:
    """∫₀¹ integrand(scale, ζ) dζ for each entry of ``scale``, with panels of ``width`` at ζ₀
    (16 Gauss–Legendre nodes per panel, 32 if ``fine``)."""
    nodes, weights = (_GL32_NODES, _GL32_WEIGHTS) if fine else (_GL_NODES, _GL_WEIGHTS)
    total = np.zeros(scale.shape)
    for sign, length in ((-1.0, MAGIC_ZETA), (1.0, 1.0 - MAGIC_ZETA)):
        left, right = _graded_panels(width, length, uniform)
        half = 0.5 * (right - left)
        distance = (left + half)[..., None] + half[..., None] * nodes           # from ζ₀
        zeta = MAGIC_ZETA + sign * distance
        values = integrand(scale[:, None, None], zeta)
        total += np.sum(half * np.sum(values * weights, axis=-1), axis=-1)
    return total


def greens_superlorentzian(kappa) -> np.ndarray:
    """G(κ) = ∫₀¹ exp(−κ² (3ζ² − 1)² / 8) dζ of a super-Lorentzian line (κ = t/T2s)."""
    kappa = np.abs(np.asarray(kappa, dtype=float))
    flat = kappa.reshape(-1)
    out = np.empty(flat.shape)
    for start in range(0, len(flat), 4096):        # bounded memory: 4096 × 2 × 17 × 16 nodes
        chunk = flat[start:start + 4096]
        width = 1.0 / (math.sqrt(3.0) * np.maximum(chunk, 1e-300))
        out[start:start + 4096] = _integrate_around_magic_angle(
            lambda k, z: np.exp(-(k * (3.0 * z * z - 1.0)) ** 2 / 8.0), chunk, width)
    return out.reshape(kappa.shape)


def greens_lorentzian(kappa) -> np.ndarray:
    """G(κ) = exp(−|κ|) of a Lorentzian line."""
    return np.exp(-np.abs(np.asarray(kappa, dtype=float)))


def greens_gaussian(kappa) -> np.ndarray:
    """G(κ) = exp(−κ²/2) of a Gaussian line."""
    return np.exp(-0.5 * np.asarray(kappa, dtype=float) ** 2)


def lineshape_superlorentzian(delta, T2s) -> np.ndarray:
    """g(Δ) = √(2/π) T2s ∫₀¹ exp(−2 (Δ T2s / a)²) / |a| dζ, a = 3ζ² − 1 (s/rad).

    The integral diverges logarithmically as Δ → 0 (the magic angle does not broaden the
    line), so g(0) = +inf; every other Δ is finite.
    """
    x = np.abs(np.asarray(delta, dtype=float) * T2s)
    flat = x.reshape(-1)
    out = np.full(flat.shape, np.inf)
    finite = flat > 0
    # The integrand vanishes within ~|x| of ζ₀ in a; a ≈ 2√3 (ζ − ζ₀) sets the panel width.
    width = flat[finite] / (2.0 * math.sqrt(3.0))

    def integrand(xx, z):
        a = np.abs(3.0 * z * z - 1.0)
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            value = np.exp(-2.0 * (xx / a) ** 2) / a
        return np.where(a > 0, value, 0.0)

    # Far from resonance the integrand peaks at the ends ζ = 0, 1: 24 equal panels resolve it.
    out[finite] = _integrate_around_magic_angle(integrand, flat[finite], width, uniform=24,
                                                fine=True)
    return (math.sqrt(2.0 / math.pi) * T2s * out).reshape(x.shape)


def lineshape_lorentzian(delta, T2s) -> np.ndarray:
    """g(Δ) = T2s / (π (1 + (Δ T2s)²)) (s/rad)."""
    x = np.asarray(delta, dtype=float) * T2s
    return T2s / (math.pi * (1.0 + x * x))


def lineshape_gaussian(delta, T2s) -> np.ndarray:
    """g(Δ) = T2s / √(2π) exp(−(Δ T2s)²/2) (s/rad)."""
    x = np.asarray(delta, dtype=float) * T2s
    return T2s / math.sqrt(2.0 * math.pi) * np.exp(-0.5 * x * x)


@dataclass(frozen=True)
class Lineshape:
    """One lineshape: its Green's function G(κ) and absorption lineshape g(Δ, T2s)."""

    name: str
    greens: Callable[[np.ndarray], np.ndarray]
    absorption: Callable[[np.ndarray, float], np.ndarray]


LINESHAPES: dict[str, Lineshape] = {
    "super_lorentzian": Lineshape("super_lorentzian", greens_superlorentzian,
                                  lineshape_superlorentzian),
    "lorentzian": Lineshape("lorentzian", greens_lorentzian, lineshape_lorentzian),
    "gaussian": Lineshape("gaussian", greens_gaussian, lineshape_gaussian),
}


def get_lineshape(name: str) -> Lineshape:
    """The registered lineshape ``name`` (an InputError lists the known ones)."""
    try:
        return LINESHAPES[name]
    except KeyError:
        raise InputError(f"unknown lineshape {name!r}; known: "
                         f"{', '.join(sorted(LINESHAPES))}") from None


def greens_function(name: str) -> Callable[[np.ndarray], np.ndarray]:
    """G(κ) of the lineshape ``name``."""
    return get_lineshape(name).greens


def saturation_rate_graham(lineshape: str, omega1, T2s: float, delta: float = 0.0, *,
                           TRF: float | None = None) -> np.ndarray:
    """Graham's saturation rate R_rf (1/s) of the semi-solid pool under an RF field ω1 (rad/s).

    Without ``TRF`` (a continuous wave, the long-pulse limit): R_rf = π ω1² g(Δ) — infinite for
    the super-Lorentzian on resonance. With ``TRF`` (s): Graham's spectral model of a rectangular
    pulse, the lineshape averaged over the pulse's power spectrum
    S(ω) = ω1² |∫₀^TRF e^{i(ω−Δ)t} dt|² / (2π TRF). By the Wiener–Khinchin theorem this equals
    R_rf = ω1² T2s ∫₀^τ (1 − κ/τ) G(κ) cos(Δ T2s κ) dκ with τ = TRF/T2s, which is finite for
    every lineshape and computed here by Gauss–Legendre panels.
    A pulse then leaves z = exp(−R_rf TRF) of an isolated pool (T1 neglected).
    """
    shape = get_lineshape(lineshape)
    omega1 = np.asarray(omega1, dtype=float)
    if TRF is None:
        return math.pi * omega1 ** 2 * shape.absorption(delta, T2s)
    if not TRF > 0:
        raise InputError(f"TRF must be positive, got {TRF!r} s")
    tau = TRF / T2s
    n_panels = int(math.ceil(2.0 * tau * (1.0 + abs(delta) * T2s))) + 1
    edges = np.linspace(0.0, tau, n_panels + 1)
    half = 0.5 * np.diff(edges)
    kappa = (edges[:-1] + half)[:, None] + half[:, None] * _GL_NODES
    weight = (1.0 - kappa / tau) * shape.greens(kappa) * np.cos(delta * T2s * kappa)
    integral = float(np.sum(half * np.sum(weight * _GL_WEIGHTS, axis=-1)))
    return omega1 ** 2 * T2s * integral
