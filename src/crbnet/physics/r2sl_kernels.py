"""R2sl table evaluation for compiled kernels (numba) and for differentiable code (PyTorch).

Both evaluate exactly the interpolant of :class:`~crbnet.physics.r2sl_table.R2slTable`
(values agree with :meth:`R2slTable.evaluate` to round-off).

numba, from inside another jitted function::

    r2sl_scalar = r2sl_scalar_kernel()           # jitted; compile once, outside the kernel
    arrays = table.kernel_arrays()                # (x_nodes, x_step, u_step, coefficients, bounds)
    R, dR_dT2s, dR_dB1, dR_dTRF, dR_dalpha = r2sl_scalar(*arrays, TRF, alpha, B1, T2s)

Pass the five arrays/scalars into your kernel as arguments and call ``r2sl_scalar`` there (numba
inlines or calls it like any jitted function). Outside the table's domain all five results are
NaN (no exception inside compiled code): validate inputs first with ``table.check(...)``.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from crbnet.physics.models import _numba
from crbnet.physics.r2sl_table import DOMAIN_TOLERANCE


def _r2sl_scalar_python(x_nodes, x_step, u_step, coefficients, bounds, TRF, alpha, B1, T2s):
    """R2sl and its derivatives (∂T2s, ∂B1, ∂TRF, ∂α) at one point; NaN outside the domain."""
    tol = DOMAIN_TOLERANCE
    nan = math.nan
    if not (bounds[0] * (1 - tol) - tol * bounds[1] <= TRF <= bounds[1] * (1 + tol)
            and bounds[2] * (1 - tol) - tol * bounds[3] <= T2s <= bounds[3] * (1 + tol)
            and abs(alpha) <= bounds[4] * (1 + tol)
            and -tol * bounds[5] <= B1 <= bounds[5] * (1 + tol)):
        return nan, nan, nan, nan, nan
    x = math.log(TRF / T2s)
    u = (B1 * alpha) * (B1 * alpha)
    n_x_cells = x_nodes.shape[0] - 1
    n_u_cells = coefficients.shape[1]
    i = int(math.floor((x - x_nodes[0]) / x_step))
    i = min(max(i, 0), n_x_cells - 1)
    if x < x_nodes[i] and i > 0:
        i -= 1
    elif x >= x_nodes[i + 1] and i < n_x_cells - 1:
        i += 1
    j = min(max(int(math.floor(u / u_step)), 0), n_u_cells - 1)
    hx = x_nodes[i + 1] - x_nodes[i]
    s = (x - x_nodes[i]) / hx
    t = u / u_step - j
    f = 0.0
    f_s = 0.0
    f_t = 0.0
    for k in range(3, -1, -1):                      # Horner in s of polynomials in t
        row = 0.0
        row_t = 0.0
        for m in range(3, -1, -1):
            a = coefficients[i, j, 4 * k + m]
            row_t = row_t * t + row
            row = row * t + a
        f_s = f_s * s + f
        f = f * s + row
        f_t = f_t * s + row_t
    f_x = f_s / hx
    f_u = f_t / u_step
    R = math.exp(f) / T2s
    return (R, -R * (1.0 + f_x) / T2s, R * f_u * 2.0 * B1 * alpha * alpha, R * f_x / TRF,
            R * f_u * 2.0 * B1 * B1 * alpha)


@functools.cache
def r2sl_scalar_kernel():
    """The jitted ``r2sl_scalar(x_nodes, x_step, u_step, coefficients, bounds, TRF, alpha, B1,
    T2s) -> (R2sl, dR_dT2s, dR_dB1, dR_dTRF, dR_dalpha)`` (see the module docstring); compiled
    on first call (cached on disk where numba can write)."""
    numba = _numba.module()
    try:
        return numba.njit(cache=True, nogil=True)(_r2sl_scalar_python)
    except RuntimeError:                   # no writable cache directory
        return numba.njit(cache=False, nogil=True)(_r2sl_scalar_python)


def _table_tensors(table, device, dtype):
    key = (str(device), dtype)
    if key not in table._torch_cache:
        import torch

        table._torch_cache[key] = (
            torch.as_tensor(table.x_nodes, dtype=dtype, device=device),
            torch.as_tensor(table.coefficients.reshape(-1, 16), dtype=dtype, device=device))
    return table._torch_cache[key]


def _wrapped(*tensors) -> bool:
    """Whether a torch.func transform (vmap, jvp, grad) wraps any of the tensors."""
    import torch

    try:
        return any(torch._C._functorch.is_functorch_wrapped_tensor(t) for t in tensors)
    except AttributeError:                 # pragma: no cover - other torch version
        return True


def r2sl_torch(table, TRF, alpha, B1, T2s):
    """R2sl (1/s) as a differentiable tensor (broadcast inputs, SI units, α signed).

    Built from plain torch operations — an index lookup (no gradient), a gather of the cell's
    16 coefficients, and polynomial arithmetic — so reverse mode, forward mode
    (torch.func.jvp, vmap) and their compositions all work, on any device and float dtype; the
    derivatives are those of the interpolant (the same as :meth:`R2slTable.evaluate`'s). Outside
    the domain: :class:`~crbnet.physics.r2sl_table.R2slDomainError` for plain tensors; under a
    torch.func transform (where values cannot be inspected) the result is NaN there.
    """
    import torch

    TRF, alpha, B1, T2s = torch.broadcast_tensors(*(torch.as_tensor(v) for v in
                                                    (TRF, alpha, B1, T2s)))
    dtype = torch.float32
    for v in (TRF, alpha, B1, T2s):
        dtype = torch.promote_types(dtype, v.dtype)
    device = TRF.device
    TRF, alpha, B1, T2s = (v.to(dtype) for v in (TRF, alpha, B1, T2s))
    inside = _inside(table, TRF, alpha, B1, T2s)
    if not _wrapped(TRF, alpha, B1, T2s) and not bool(inside.all()):
        table.check(*(v.detach().cpu().double().numpy() for v in (TRF, alpha, B1, T2s)))
    x_nodes, coefficients = _table_tensors(table, device, dtype)
    x = torch.log(TRF / T2s)
    u = (B1 * alpha) ** 2
    n_x_cells = len(table.x_nodes) - 1
    n_u_cells = table.coefficients.shape[1]
    with torch.no_grad():
        xd, ud = x.detach(), u.detach()
        i = torch.clamp(torch.floor((xd - float(table.x_nodes[0])) / table.x_step).long(), 0,
                        n_x_cells - 1)
        i = i - ((xd < _gather(x_nodes, i)) & (i > 0)).long()
        i = i + ((xd >= _gather(x_nodes, i + 1)) & (i < n_x_cells - 1)).long()
        j = torch.clamp(torch.floor(ud / table.u_step).long(), 0, n_u_cells - 1)
    left = _gather(x_nodes, i)
    s = (x - left) / (_gather(x_nodes, i + 1) - left)
    t = u / table.u_step - j.to(dtype)
    a = _gather(coefficients, i * n_u_cells + j)                # [..., 16]
    f = torch.zeros_like(s)
    for k in range(3, -1, -1):
        row = a[..., 4 * k + 3]
        for m in range(2, -1, -1):
            row = row * t + a[..., 4 * k + m]
        f = f * s + row
    R = torch.exp(f) / T2s
    return torch.where(inside, R, torch.full_like(R, float("nan")))


def _gather(values, index):
    """values[index] along the first axis for an index of any shape (0-d too, which plain
    indexing would turn into .item() under vmap)."""
    import torch

    flat = torch.index_select(values, 0, index.reshape(-1))
    return flat.reshape(index.shape + values.shape[1:])


def _inside(table, TRF, alpha, B1, T2s):
    """Elementwise domain mask (same tolerance as the numpy check)."""
    import torch

    lo_trf, hi_trf, lo_t2s, hi_t2s, alpha_max, b1_max = (float(b) for b in table.bounds())
    tol = DOMAIN_TOLERANCE
    with torch.no_grad():
        return ((TRF >= lo_trf * (1 - tol) - tol * hi_trf) & (TRF <= hi_trf * (1 + tol))
                & (T2s >= lo_t2s * (1 - tol) - tol * hi_t2s) & (T2s <= hi_t2s * (1 + tol))
                & (torch.abs(alpha) <= alpha_max * (1 + tol))
                & (B1 >= -tol * b1_max) & (B1 <= b1_max * (1 + tol)))


def evaluate_numba(table, TRF, alpha, B1, T2s) -> tuple[np.ndarray, ...]:
    """:meth:`R2slTable.evaluate` through the numba kernel, point by point (for tests)."""
    kernel = r2sl_scalar_kernel()
    arrays = table.kernel_arrays()
    TRF, alpha, B1, T2s = np.broadcast_arrays(*(np.asarray(v, dtype=float)
                                                for v in (TRF, alpha, B1, T2s)))
    out = np.empty((5,) + TRF.shape)
    for index in np.ndindex(TRF.shape):
        out[(slice(None),) + index] = kernel(*arrays, TRF[index], alpha[index], B1[index],
                                             T2s[index])
    return tuple(out)


@functools.cache
def _fill_kernel():
    numba = _numba.module()
    scalar = r2sl_scalar_kernel()

    def fill(x_nodes, x_step, u_step, coefficients, bounds, alpha, TRF, B1, T2s, rate, d_t2s,
             d_b1):
        for v in numba.prange(B1.shape[0]):
            for k in range(alpha.shape[0]):
                if alpha[k] == 0.0:
                    rate[v, k] = 0.0
                    d_t2s[v, k] = 0.0
                    d_b1[v, k] = 0.0
                    continue
                r, dt, db, _, _ = scalar(x_nodes, x_step, u_step, coefficients, bounds, TRF[k],
                                         alpha[k], B1[v], T2s[v])
                rate[v, k] = r
                d_t2s[v, k] = dt
                d_b1[v, k] = db

    return _numba.compile_parallel(fill)


@functools.cache
def _fill_values_kernel():
    numba = _numba.module()
    scalar = r2sl_scalar_kernel()

    def fill_values(x_nodes, x_step, u_step, coefficients, bounds, alpha, TRF, B1, T2s, rate):
        # Only the value is stored, so the compiler drops the derivative arithmetic.
        for v in numba.prange(B1.shape[0]):
            for k in range(alpha.shape[0]):
                rate[v, k] = 0.0 if alpha[k] == 0.0 else scalar(
                    x_nodes, x_step, u_step, coefficients, bounds, TRF[k], alpha[k], B1[v],
                    T2s[v])[0]

    return _numba.compile_parallel(fill_values)


def r2sl_for_pulses(table, alpha: np.ndarray, TRF: np.ndarray, B1: np.ndarray,
                    T2s: np.ndarray, derivatives: bool = True
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """R2sl (1/s) and its derivatives in T2s and B1, [N, P] float64 each, for pulses (α rad,
    TRF s; [P]) and voxels (B1, T2s s; [N]), by the compiled interpolant in parallel over the
    voxels. Pulses with α = 0 get 0 (no RF acts through R2sl). Inputs outside the table's
    domain raise :class:`~crbnet.physics.r2sl_table.R2slDomainError` first. With
    ``derivatives=False`` (a signal without its Jacobian) the two derivative arrays are zeros
    and only R2sl is interpolated (~13 % of a simulation on the in-vivo sequence otherwise)."""
    alpha = np.ascontiguousarray(np.abs(alpha), dtype=np.float64)
    TRF = np.ascontiguousarray(TRF, dtype=np.float64)
    B1 = np.ascontiguousarray(B1, dtype=np.float64)
    T2s = np.ascontiguousarray(T2s, dtype=np.float64)
    active = alpha != 0
    if B1.size and active.any():
        table.check(TRF[active], alpha[active], B1, T2s)
    shape = (B1.shape[0], alpha.shape[0])
    if not derivatives:
        rate = np.empty(shape)
        with _numba.threads():
            _fill_values_kernel()(*table.kernel_arrays(), alpha, TRF, B1, T2s, rate)
        return rate, np.zeros(shape), np.zeros(shape)
    out = tuple(np.empty(shape) for _ in range(3))
    with _numba.threads():
        _fill_kernel()(*table.kernel_arrays(), alpha, TRF, B1, T2s, *out)
    return out
