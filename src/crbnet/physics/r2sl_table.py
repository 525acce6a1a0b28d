"""The R2sl table: log(R2sl T2s) interpolated over (log τ, θ²) by C¹ bicubic patches, with the
exact derivatives of the interpolant, built once per machine and cached on disk.

Coordinates: x = log(TRF/T2s), u = (B1 α)² (so the table is smooth in the signed flip angle
and ρ's finite limit at α = 0 is an ordinary grid line), value f = log ρ, ρ = R2sl T2s.
Nodes: uniform in u; in x nominally uniform, each τ rounded to the IDE grid (multiples of
``step``), so the x nodes are slightly uneven. The node values come from
:class:`~crbnet.physics.r2sl_solver.OmegaSeries` and the root find; 5-point differences
(default; a not-a-knot spline with ``method="spline"``) give ∂f/∂x, ∂f/∂u and ∂²f/∂x∂u at the
nodes, and each cell stores the 16 coefficients a_kl of the bicubic Hermite patch
f = Σ a_kl s^k t^l (s, t ∈ [0, 1] across the cell).

Evaluation: :meth:`R2slTable.evaluate` (numpy), and in :mod:`crbnet.physics.r2sl_kernels`
``r2sl_scalar_kernel`` (numba, for other kernels) and ``r2sl_torch`` (differentiable).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import threading
from pathlib import Path

import numpy as np
from scipy.interpolate import CubicSpline

from crbnet.errors import InputError
from crbnet.physics.lineshapes import get_lineshape
from crbnet.physics.r2sl_solver import OmegaSeries, rho_from_w

#: Relative slack of the domain checks (numpy, torch and the compiled evaluation alike):
#: round-off in a bound's value is not a point outside the table.
DOMAIN_TOLERANCE = 1e-9

VERSION = "r2sl-table-1"

# Hermite basis → monomials on [0, 1]: p(s) = [1 s s² s³] · _HERMITE · [p0, p1, p0', p1'].
_HERMITE = np.array([[1.0, 0.0, 0.0, 0.0],
                     [0.0, 0.0, 1.0, 0.0],
                     [-3.0, 3.0, -2.0, -1.0],
                     [2.0, -2.0, 1.0, 1.0]])


class R2slDomainError(InputError):
    """A parameter outside the range the R2sl table covers."""


@dataclasses.dataclass(frozen=True)
class R2slGridSpec:
    """What a table covers (SI units) and how it is built; its JSON is the cache key."""

    lineshape: str = "super_lorentzian"
    TRF_min: float = 100e-6
    TRF_max: float = 1e-3
    T2s_min: float = 5e-6
    T2s_max: float = 25e-6
    alpha_max: float = math.pi
    B1_max: float = 1.5
    n_x: int = 161           # nodes in log τ
    n_u: int = 161           # nodes in θ²
    pad: float = 0.01        # relative margin of the table beyond the domain
    step: float = 0.05       # κ step of the IDE solve
    n_terms: int = 34        # terms of the Ω² series
    method: str = "local"    # node derivatives: "local" or "spline" (bicubic_coefficients)

    def key(self) -> str:
        return json.dumps({"version": VERSION, **dataclasses.asdict(self)}, sort_keys=True)

    @property
    def tau_range(self) -> tuple[float, float]:
        return self.TRF_min / self.T2s_max, self.TRF_max / self.T2s_min

    @property
    def theta_max(self) -> float:
        return self.alpha_max * self.B1_max


class R2slTable:
    """R2sl(TRF, α, B1, T2s) of one lineshape by interpolation (see the module docstring)."""

    def __init__(self, spec: R2slGridSpec, x_nodes: np.ndarray, u_step: float,
                 coefficients: np.ndarray) -> None:
        self.spec = spec
        self.x_nodes = np.ascontiguousarray(x_nodes, dtype=float)
        self.u_step = float(u_step)
        self.coefficients = np.ascontiguousarray(coefficients, dtype=float)  # [nx-1, nu-1, 16]
        self.x_step = float((self.x_nodes[-1] - self.x_nodes[0]) / (len(self.x_nodes) - 1))
        self._torch_cache: dict = {}

    @property
    def lineshape(self) -> str:
        return self.spec.lineshape

    # ---- domain -------------------------------------------------------------------------
    def bounds(self) -> np.ndarray:
        """[TRF_min, TRF_max, T2s_min, T2s_max, alpha_max, B1_max] (SI)."""
        s = self.spec
        return np.array([s.TRF_min, s.TRF_max, s.T2s_min, s.T2s_max, s.alpha_max, s.B1_max])

    def check(self, TRF, alpha, B1, T2s) -> None:
        """Raise :class:`R2slDomainError` naming the first parameter outside the domain."""
        s = self.spec
        tol = DOMAIN_TOLERANCE
        for name, value, low, high, unit in (
                ("TRF", TRF, s.TRF_min, s.TRF_max, "s"),
                ("T2s", T2s, s.T2s_min, s.T2s_max, "s"),
                ("B1", B1, 0.0, s.B1_max, ""),
                ("|alpha|", np.abs(np.asarray(alpha, dtype=float)), 0.0, s.alpha_max, "rad")):
            value = np.asarray(value, dtype=float)
            bad = ~((value >= low * (1 - tol) - tol * high) & (value <= high * (1 + tol)))
            if np.any(bad):
                worst = value[bad].flat[0] if value.ndim else float(value)
                raise R2slDomainError(
                    f"R2sl table ({s.lineshape}): {name} = {worst:.6g} {unit} outside "
                    f"[{low:.6g}, {high:.6g}] {unit}".replace("  ", " "))

    # ---- evaluation ---------------------------------------------------------------------
    def locate_x(self, x: np.ndarray) -> np.ndarray:
        """Cell index along x (the nodes are nearly uniform: a guess, then one correction)."""
        n_cells = len(self.x_nodes) - 1
        i = np.clip(np.floor((x - self.x_nodes[0]) / self.x_step).astype(np.int64), 0,
                    n_cells - 1)
        i = i - ((x < self.x_nodes[i]) & (i > 0))
        i = i + ((x >= self.x_nodes[i + 1]) & (i < n_cells - 1))
        return i

    def log_rho(self, x, u) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """f = log ρ and ∂f/∂x, ∂f/∂u of the interpolant at (x, u) (no domain check)."""
        x, u = np.broadcast_arrays(np.asarray(x, dtype=float), np.asarray(u, dtype=float))
        i = self.locate_x(x)
        n_u_cells = self.coefficients.shape[1]
        j = np.clip(np.floor(u / self.u_step).astype(np.int64), 0, n_u_cells - 1)
        hx = self.x_nodes[i + 1] - self.x_nodes[i]
        s = (x - self.x_nodes[i]) / hx
        t = u / self.u_step - j
        a = self.coefficients[i, j].reshape(x.shape + (4, 4))
        ts = np.stack([np.ones_like(t), t, t * t, t * t * t], axis=-1)
        dts = np.stack([np.zeros_like(t), np.ones_like(t), 2 * t, 3 * t * t], axis=-1)
        ss = np.stack([np.ones_like(s), s, s * s, s * s * s], axis=-1)
        dss = np.stack([np.zeros_like(s), np.ones_like(s), 2 * s, 3 * s * s], axis=-1)
        f = np.einsum("...k,...kl,...l->...", ss, a, ts)
        f_s = np.einsum("...k,...kl,...l->...", dss, a, ts)
        f_t = np.einsum("...k,...kl,...l->...", ss, a, dts)
        return f, f_s / hx, f_t / self.u_step

    def evaluate(self, TRF, alpha, B1, T2s):
        """(R2sl, ∂R2sl/∂T2s, ∂R2sl/∂B1, ∂R2sl/∂TRF, ∂R2sl/∂α), broadcast arrays, SI units
        (1/s, 1/s², 1/s, 1/s², 1/(s rad)); α signed (R2sl depends on (B1 α)²)."""
        TRF, alpha, B1, T2s = np.broadcast_arrays(*(np.asarray(v, dtype=float)
                                                    for v in (TRF, alpha, B1, T2s)))
        self.check(TRF, alpha, B1, T2s)
        f, f_x, f_u = self.log_rho(np.log(TRF / T2s), (B1 * alpha) ** 2)
        rho = np.exp(f)
        R = rho / T2s
        dR_dT2s = -R * (1.0 + f_x) / T2s
        dR_dTRF = R * f_x / TRF
        dR_dB1 = R * f_u * 2.0 * B1 * alpha * alpha
        dR_dalpha = R * f_u * 2.0 * B1 * B1 * alpha
        return R, dR_dT2s, dR_dB1, dR_dTRF, dR_dalpha

    def kernel_arrays(self) -> tuple:
        """The plain arguments of the numba kernel, in order:
        (x_nodes [nx] float64, x_step float, u_step float, coefficients [nx-1, nu-1, 16]
        float64, bounds [6] float64) — see :func:`crbnet.physics.r2sl_kernels.r2sl_scalar`."""
        return (self.x_nodes, self.x_step, self.u_step, self.coefficients, self.bounds())


# ---- building ---------------------------------------------------------------------------
def node_grid(spec: R2slGridSpec) -> tuple[np.ndarray, np.ndarray, float]:
    """τ nodes (multiples of the IDE step, nearly uniform in log τ), u nodes, u step."""
    tau_low, tau_high = spec.tau_range
    x_nominal = np.linspace(math.log(tau_low * (1 - spec.pad)),
                            math.log(tau_high * (1 + spec.pad)), spec.n_x)
    tau = np.round(np.exp(x_nominal) / spec.step) * spec.step
    if np.any(np.diff(tau) <= 0) or spec.n_x < 4 or spec.n_u < 4:
        raise InputError("R2sl grid too fine for its IDE step (or fewer than 4 nodes)")
    u_max = (spec.theta_max * (1 + spec.pad)) ** 2
    u = np.linspace(0.0, u_max, spec.n_u)
    return tau, u, float(u[1] - u[0])


def log_rho_nodes(spec: R2slGridSpec) -> tuple[np.ndarray, dict]:
    """log ρ at the table's nodes [n_x, n_u], and counts of the root find's corner cases."""
    tau, u, _ = node_grid(spec)
    series = OmegaSeries(spec.lineshape, float(tau[-1]), spec.step, spec.n_terms)
    index = np.round(tau / spec.step).astype(np.int64)
    T, U = np.meshgrid(tau, u, indexing="ij")
    I = np.broadcast_to(index[:, None], T.shape)
    Omega = np.sqrt(U) / T
    w = series.w(I.ravel(), Omega.ravel())
    rho, report = rho_from_w(w, T.ravel(), Omega.ravel())
    if not np.all(np.isfinite(rho) & (rho > 0)):
        raise RuntimeError("R2sl root find gave a non-positive or non-finite ρ")
    counts = {"nodes": int(rho.size), "no_root": int(report.no_root.sum()),
              "several_roots": int(report.several_roots.sum())}
    return np.log(rho).reshape(T.shape), counts


def local_derivative(nodes: np.ndarray, values: np.ndarray, axis: int) -> np.ndarray:
    """∂values/∂nodes along ``axis`` at the nodes: the derivative of the quartic through the
    5 nearest nodes (centred inside, one-sided at the ends; O(h⁴), local)."""
    n = len(nodes)
    values = np.moveaxis(values, axis, 0)
    out = np.empty(values.shape)
    for i in range(n):
        start = min(max(i - 2, 0), n - 5)
        window = nodes[start:start + 5] - nodes[i]
        # Weights w with Σ w_k p(window_k) = p'(0) for every quartic p.
        vandermonde = np.vander(window, 5, increasing=True).T
        weights = np.linalg.solve(vandermonde, np.array([0.0, 1.0, 0.0, 0.0, 0.0]))
        out[i] = np.tensordot(weights, values[start:start + 5], axes=(0, 0))
    return np.moveaxis(out, 0, axis)


def bicubic_coefficients(x: np.ndarray, u: np.ndarray, f: np.ndarray,
                         method: str = "local") -> np.ndarray:
    """Per-cell monomial coefficients [nx-1, nu-1, 16] of the bicubic Hermite interpolant of f
    whose node derivatives come from ``method``: "local" (5-point differences: C¹, and a kink
    in f spoils only the two neighbouring cells) or "spline" (not-a-knot tensor spline: C²,
    but a kink rings through the whole row)."""
    if method == "spline":
        f_x = CubicSpline(x, f, axis=0)(x, 1)
        f_u = CubicSpline(u, f, axis=1)(u, 1)
        f_xu = CubicSpline(u, f_x, axis=1)(u, 1)
    else:
        f_x = local_derivative(x, f, 0)
        f_u = local_derivative(u, f, 1)
        f_xu = local_derivative(u, f_x, 1)
    hx = np.diff(x)[:, None]
    hu = u[1] - u[0]
    # Corner data of each cell in Hermite order [p0, p1, p0', p1'] along each axis.
    data = np.empty((len(x) - 1, len(u) - 1, 4, 4))
    for a, (sx, dx) in enumerate(((slice(None, -1), 0), (slice(1, None), 0),
                                  (slice(None, -1), 1), (slice(1, None), 1))):
        for b, (su, du) in enumerate(((slice(None, -1), 0), (slice(1, None), 0),
                                      (slice(None, -1), 1), (slice(1, None), 1))):
            source = ((f, f_u), (f_x, f_xu))[dx][du]
            data[:, :, a, b] = source[sx, su] * (hx if dx else 1.0) * (hu if du else 1.0)
    coefficients = np.einsum("ka,ijab,lb->ijkl", _HERMITE, data, _HERMITE)
    return coefficients.reshape(len(x) - 1, len(u) - 1, 16)


def build_table(spec: R2slGridSpec) -> tuple[R2slTable, dict]:
    """Solve and interpolate (no cache). The Lorentzian is exact (ρ = 1): no solve."""
    get_lineshape(spec.lineshape)
    tau, u, u_step = node_grid(spec)
    x = np.log(tau)
    if spec.lineshape == "lorentzian":
        f, counts = np.zeros((len(x), len(u))), {"nodes": 0, "no_root": 0, "several_roots": 0}
    else:
        f, counts = log_rho_nodes(spec)
    return R2slTable(spec, x, u_step, bicubic_coefficients(x, u, f, spec.method)), counts


# ---- caching ----------------------------------------------------------------------------
def cache_dir() -> Path:
    """$CRBNET_CACHE_DIR, else $XDG_CACHE_HOME/crbnet, else ~/.cache/crbnet."""
    if os.environ.get("CRBNET_CACHE_DIR"):
        return Path(os.environ["CRBNET_CACHE_DIR"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "crbnet"
    return Path.home() / ".cache" / "crbnet"


def cache_path(spec: R2slGridSpec) -> Path:
    digest = hashlib.sha256(spec.key().encode()).hexdigest()[:16]
    return cache_dir() / f"r2sl-{spec.lineshape}-{digest}.npz"


def _load(path: Path, spec: R2slGridSpec) -> R2slTable | None:
    """The table in ``path`` if it is ours and sound, else None (never trusted blindly)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["key"]) != spec.key():
                return None
            x, u_step, coefficients = data["x_nodes"], float(data["u_step"]), data["coefficients"]
    except Exception:                     # missing, truncated, corrupt, foreign: rebuild
        return None
    tau, u, expected_step = node_grid(spec)
    ok = (x.shape == tau.shape and coefficients.shape == (len(tau) - 1, len(u) - 1, 16)
          and np.allclose(x, np.log(tau), rtol=0, atol=1e-12) and u_step == expected_step
          and np.all(np.isfinite(coefficients)))
    return R2slTable(spec, x, u_step, coefficients) if ok else None


def _save(path: Path, table: R2slTable) -> None:
    from crbnet.files import atomic_path

    with atomic_path(path) as tmp:
        np.savez(tmp, key=np.array(table.spec.key()), x_nodes=table.x_nodes,
                 u_step=np.array(table.u_step), coefficients=table.coefficients)


_TABLES: dict[str, R2slTable] = {}
_LOCK = threading.Lock()


def get_table(lineshape: str = "super_lorentzian", spec: R2slGridSpec | None = None,
              ) -> R2slTable:
    """The table of ``lineshape`` (default grid) or of ``spec``: from this process's memory,
    else from the disk cache, else built (about 10 s on one core) and cached. A cache that
    cannot be written only costs the rebuild in the next process."""
    spec = spec or R2slGridSpec(lineshape=lineshape)
    key = spec.key()
    with _LOCK:
        if key in _TABLES:
            return _TABLES[key]
        path = cache_path(spec)
        table = _load(path, spec)
        if table is None:
            table, _ = build_table(spec)
            try:
                _save(path, table)
            except OSError:
                pass                      # read-only or full disk: keep the table in memory
        _TABLES[key] = table
        return table
