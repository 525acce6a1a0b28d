"""Cramér–Rao bounds of signal-model parameters (docs/statistics.md §2).

Measurement ``y = M0·f(θ) + n`` with complex white Gaussian noise (σ² per real and imaginary
part). With ``φ = (θ, Re M0, Im M0)`` and ``J = ∂(M0 f)/∂φ``, the Fisher information is
``F = Re(Jᴴ J) / σ²`` and ``CRB(θ_p) = [F⁻¹]_pp``. Including M0 makes the bound honest: an
estimator must find M0 too. Since ``∂(M0 f)/∂θ = M0·∂f/∂θ`` and the phase of M0 cancels in
``Re(Jᴴ J)``, the bound is computed once for σ = 1, |M0| = 1 and rescaled by ``σ²/|M0|²``.

Jacobians come from forward-mode autodiff: one ``torch.func.jvp`` per parameter direction,
batched over directions with ``torch.func.vmap``; the voxel batch passes through the model's
own batched ``simulate`` (voxels are independent, so a tangent that is the same unit vector in
every voxel gives every voxel's column at once), and the primal of that pass is the signal.
Voxels go through in chunks (a model may suggest the size with a ``crb_chunk_size`` attribute);
Jacobian and Fisher matrix are computed in float64 whatever the input dtype. A model may supply
its own forward-mode derivative where it has a faster one (``explicit_signal_and_jacobian``;
for a real signal ``explicit_real_gram``, and for any signal ``explicit_fisher_information``,
which are all the Fisher matrix needs without a subspace): mt_hybrid_state and
mt_generalized_bloch do on CPU (compiled kernels, tested against this module's route).

A singular or ill-conditioned Fisher matrix (e.g. T2s when m0s → 0) is detected on its
diagonally scaled form; parameters in its (numerical) null space get ``inf`` and a
:class:`SingularFisherWarning` is issued — never a silently wrong number. Voxels whose scaled
Fisher matrix is provably well conditioned are inverted by Cholesky; the others by eigh.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch.func import jvp, vmap

from crbnet.physics.models.base import SignalModel


class SingularFisherWarning(RuntimeWarning):
    """Some voxels have a singular or ill-conditioned Fisher matrix."""


def _signal_and_jacobian(model: SignalModel, theta: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """``f`` [N, T] and ``∂f/∂θ`` as [P, N, T] (one column per direction) from one forward pass:
    the primal of the ``jvp`` is the signal itself (no batch dimension under ``vmap``). A model
    that has its own forward-mode Jacobian for this input (a compiled kernel) supplies it."""
    P = model.n_parameters
    if theta.shape[0] == 0:
        cdtype = torch.complex128 if theta.dtype == torch.float64 else torch.complex64
        return (torch.zeros(0, model.n_timepoints, dtype=cdtype, device=theta.device),
                torch.zeros(P, 0, model.n_timepoints, dtype=cdtype, device=theta.device))
    explicit = model.explicit_signal_and_jacobian(theta)
    if explicit is not None:
        return explicit
    directions = torch.eye(P, dtype=theta.dtype, device=theta.device)[:, None, :].expand(
        P, theta.shape[0], P)

    def column(direction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return jvp(lambda th: model.simulate(th, check=False), (theta,), (direction,))

    return vmap(column, out_dims=(None, 0))(directions)


def jacobian(model: SignalModel, theta: torch.Tensor) -> torch.Tensor:
    """∂f/∂θ for M0 = 1 by forward-mode autodiff.

    Args:
        model: a signal model.
        theta: [N, P] parameters (SI).

    Returns:
        complex tensor [N, T, P].
    """
    return signal_and_jacobian(model, theta)[1]


def signal_and_jacobian(model: SignalModel, theta: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """``f`` [N, T] and ``∂f/∂θ`` [N, T, P] (M0 = 1) from one forward-mode pass — cheaper than
    ``model.simulate`` plus :func:`jacobian`."""
    model.check_theta(theta)
    signal, columns = _signal_and_jacobian(model, theta)
    return _as_complex(signal), _as_complex(columns).permute(1, 2, 0)


def _as_complex(x: torch.Tensor) -> torch.Tensor:
    return x if x.is_complex() else torch.complex(x, torch.zeros_like(x))


def _fisher_from_columns(columns: torch.Tensor, signal: torch.Tensor,
                         basis: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`fisher_information` with the Jacobian as [P, N, T] columns (complex, or real for
    a real signal)."""
    if not columns.is_complex():
        if basis is None:
            R = torch.cat((columns, signal[None])).permute(1, 0, 2)     # [N, P+1, T]
            return _fisher_from_real_gram(R @ R.mT)
        columns, signal = _as_complex(columns), _as_complex(signal)
    J = torch.cat((columns, signal[None], 1j * signal[None]))           # [P+2, N, T]
    if basis is not None:
        J = J @ basis.to(dtype=J.dtype, device=J.device).conj()        # Uᴴ y for each column
    # Re(Jᴴ J) = Re(J)ᵀ Re(J) + Im(J)ᵀ Im(J): one real product over 2T rows, half the flops of
    # a complex product.
    R = torch.view_as_real(J).permute(1, 0, 2, 3).reshape(J.shape[1], J.shape[0], -1)
    return R @ R.mT


def _fisher_from_real_gram(G: torch.Tensor) -> torch.Tensor:
    """The Fisher matrix of a real signal f from the Gram matrix G [N, P+1, P+1] of
    ``[∂f/∂θ, f]``: with J = [∂f/∂θ, f, i·f], the i·f column is orthogonal to all the others in
    Re(Jᴴ J) and has the norm of f."""
    n = G.shape[-1]
    F = G.new_zeros(G.shape[0], n + 1, n + 1)
    F[:, :n, :n] = G
    F[:, n, n] = G[:, n - 1, n - 1]
    return F


def fisher_information(jac: torch.Tensor, signal: torch.Tensor,
                       basis: torch.Tensor | None = None) -> torch.Tensor:
    """Fisher matrix for σ = 1, M0 = 1, with ``(Re M0, Im M0)`` as the last two parameters.

    Args:
        jac: [N, T, P] complex ∂f/∂θ.
        signal: [N, T] complex f.
        basis: optional [T, k] orthonormal subspace U; the data are ``Uᴴ y`` (noise stays
            white with the same σ), so ``Uᴴ J`` is used.

    Returns:
        real [N, P+2, P+2].
    """
    return _fisher_from_columns(jac.permute(2, 0, 1), signal, basis)


@dataclass
class CRBResult:
    """Per-voxel CRB for σ = 1, |M0| = 1, plus which voxels were singular."""

    variance: torch.Tensor        # [N, P]
    singular: torch.Tensor        # [N] bool


def _invert_fisher(F: torch.Tensor, n_theta: int, rcond: float,
                   param_scale: torch.Tensor) -> CRBResult:
    """Diagonal of F⁻¹ for the first ``n_theta`` entries, with a null-space check.

    ``param_scale`` [N, n_theta] is a typical magnitude of each parameter (SI). A parameter is
    dead — the signal does not depend on it — when its scaled information
    ``F_pp · scale_p²`` is below 1e-20 of the signal energy ``‖f‖² = F[Re M0, Re M0]``: that is
    the level of floating-point noise in an autodiff derivative that is zero in exact arithmetic.
    """
    d = torch.diagonal(F, dim1=-2, dim2=-1)
    energy = d[:, n_theta:n_theta + 1]
    scale2 = torch.cat((param_scale.to(F.dtype) ** 2, torch.ones_like(d[:, n_theta:])), -1)
    dead = d * scale2 <= 1e-20 * energy
    scale = torch.where(dead, torch.ones_like(d), d).rsqrt()
    Fs = F * scale[:, :, None] * scale[:, None, :]
    Fs = torch.where(dead[:, :, None] | dead[:, None, :], torch.zeros_like(Fs), Fs)
    Fs = Fs + torch.diag_embed(dead.to(Fs.dtype))  # keep dead rows invertible; they get inf below
    # Most voxels are well conditioned: a Cholesky inverse (several times cheaper than eigh)
    # suffices where it provably has no null space — the 2-norm condition number is at most
    # n·κ₁ with κ₁ = ‖Fs‖₁‖Fs⁻¹‖₁, so n·κ₁ < 1/rcond rules out eigenvalues below rcond·λ_max.
    n = Fs.shape[-1]
    chol, info = torch.linalg.cholesky_ex(Fs)
    failed = info != 0
    # A failed factor can hold an exact zero pivot, on which cholesky_inverse raises: give
    # those voxels a harmless identity factor here; they go to eigh below.
    chol = torch.where(failed[:, None, None], torch.eye(n, dtype=Fs.dtype, device=Fs.device),
                       chol)
    inv = torch.cholesky_inverse(chol)
    kappa1 = Fs.abs().sum(-2).amax(-1) * inv.abs().sum(-2).amax(-1)
    well = ~failed & (n * kappa1 < 1 / rcond)                # NaN κ₁ compares False
    diag_inv = torch.diagonal(inv, dim1=-2, dim2=-1) * scale * scale
    unidentifiable = dead.clone()
    rest = (~well).nonzero().squeeze(-1)
    if rest.numel():
        diag_rest, null_rest = _eigh_inverse_diagonal(Fs[rest], rcond)
        diag_inv[rest] = diag_rest * scale[rest] * scale[rest]
        unidentifiable[rest] |= null_rest
    variance = torch.where(unidentifiable, torch.full_like(diag_inv, float("inf")), diag_inv)
    singular = unidentifiable[:, :n_theta].any(-1)
    return CRBResult(variance=variance[:, :n_theta], singular=singular)


def _eigh_inverse_diagonal(Fs: torch.Tensor, rcond: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Diagonal of the pseudo-inverse of symmetric Fs [M, n, n] with eigenvalues below
    ``rcond·λ_max`` dropped, and which parameters load on those null directions."""
    evals, evecs = torch.linalg.eigh(Fs)
    null = evals < rcond * evals[:, -1:].clamp_min(torch.finfo(Fs.dtype).tiny)
    inv_evals = torch.where(null, torch.zeros_like(evals), 1 / evals)
    diag_inv = (evecs * evecs * inv_evals[:, None, :]).sum(-1)
    # A parameter loads on the null space if a null eigenvector has a visible component on it.
    loading = (evecs * evecs * null[:, None, :].to(evecs.dtype)).sum(-1)
    return diag_inv, loading > 1e-8


def crb(model: SignalModel, theta: torch.Tensor, sigma: float | torch.Tensor = 1.0,
        m0: float | complex | torch.Tensor = 1.0, basis: torch.Tensor | None = None,
        chunk_size: int | None = None, rcond: float | None = None,
        warn: bool = True) -> torch.Tensor:
    """Cramér–Rao bound (variance) of each estimated parameter.

    Args:
        model: signal model; its ``parameters`` give the column order.
        theta: [N, P] parameters in SI units; computed in float64 whatever the dtype.
        sigma: noise standard deviation per real/imaginary part (scalar or [N]).
        m0: complex (or real) M0, scalar or [N]; only |M0| matters.
        basis: optional [T, k] orthonormal subspace the data are projected on.
        chunk_size: voxels per Jacobian evaluation (bounds memory; results do not depend on
            it). Default: :func:`default_chunk_size`.
        rcond: eigenvalue ratio below which the scaled Fisher matrix counts as singular;
            default 1000·eps of float64.
        warn: issue a :class:`SingularFisherWarning` when singular voxels are found.

    Returns:
        [N, P] variances in SI units squared; ``inf`` where a parameter is not identifiable.
    """
    result = crb_details(model, theta, basis=basis, chunk_size=chunk_size, rcond=rcond)
    if warn and result.singular.any():
        n_bad = int(result.singular.sum())
        bad_params = [p for j, p in enumerate(model.parameters)
                      if torch.isinf(result.variance[:, j]).any()]
        warnings.warn(f"{n_bad} of {theta.shape[0]} voxel(s) have a singular Fisher matrix; "
                      f"CRB set to inf for: {', '.join(bad_params)}", SingularFisherWarning,
                      stacklevel=2)
    return rescale(result.variance, sigma, m0)


def rescale(variance: torch.Tensor, sigma: float | torch.Tensor = 1.0,
            m0: float | complex | torch.Tensor = 1.0) -> torch.Tensor:
    """Scale a CRB computed for σ = 1, |M0| = 1 to other σ and |M0|: ``× σ²/|M0|²``."""
    def magnitude(x: float | complex | torch.Tensor) -> torch.Tensor:
        # Python numbers go straight to float64: they must not pass through float32.
        t = x if isinstance(x, torch.Tensor) else torch.tensor(complex(x), dtype=torch.complex128)
        return t.abs().to(device=variance.device, dtype=torch.float64)

    factor = ((magnitude(sigma) / magnitude(m0)) ** 2).to(variance.dtype)
    if factor.ndim == 1:
        factor = factor[:, None]
    return variance * factor


_GRAM_CHUNK = 16384


def default_chunk_size(model: SignalModel) -> int:
    """Voxels per Jacobian chunk: the model's ``crb_chunk_size`` hint, else 2048.

    The best size depends on the model: cache-sized chunks suit models whose forward pass holds
    large [T, N] tensors (mt_hybrid_state: 512), large ones suit models that loop over TRs with
    small per-step tensors, where per-operation overhead dominates (fisp_mrf: 4096).
    """
    return int(getattr(model, "crb_chunk_size", 2048))


def crb_details(model: SignalModel, theta: torch.Tensor, basis: torch.Tensor | None = None,
                chunk_size: int | None = None, rcond: float | None = None) -> CRBResult:
    """Unscaled CRB (σ = 1, |M0| = 1) and the singular-voxel mask, computed in chunks."""
    model.check_theta(theta)
    # Ill-conditioned Fisher matrices amplify Jacobian round-off by their condition number,
    # so the Jacobian is always computed in float64; the result comes back in theta's dtype.
    theta64 = theta.to(torch.float64)
    # A model that forms the Gram matrix itself (asked with zero voxels whether it does) keeps
    # only [P+1, P+1] numbers per voxel, so its chunks can be large.
    use_fisher = basis is None and model.explicit_fisher_information(theta64[:0]) is not None
    use_gram = (basis is None and not use_fisher
                and model.explicit_real_gram(theta64[:0]) is not None)
    if chunk_size is None:
        chunk_size = _GRAM_CHUNK if use_gram or use_fisher else default_chunk_size(model)
    parts = []
    for start in range(0, theta.shape[0], chunk_size):
        th = theta64[start:start + chunk_size]
        gram = model.explicit_real_gram(th) if use_gram else None
        fisher = model.explicit_fisher_information(th) if use_fisher else None
        if fisher is not None:
            F = fisher
        elif gram is not None:
            F = _fisher_from_real_gram(gram)
        else:
            sig, columns = _signal_and_jacobian(model, th)
            F = _fisher_from_columns(columns, sig, basis).to(torch.float64)
        parts.append(_invert(model, F, th, rcond))
    return _joined(parts, model, theta)


def signal_and_crb(model: SignalModel, theta: torch.Tensor, chunk_size: int | None = None,
                   rcond: float | None = None) -> tuple[torch.Tensor, CRBResult]:
    """The signal ``f(θ)`` [N, T] (complex128) with the unscaled CRB of :func:`crb_details`
    (``crbnet apply`` needs both: M0 and the residual at the estimate).

    One forward-mode pass per chunk gives both (its primal is the signal), which saves the
    separate simulation — except for a model that forms the Fisher matrix's Gram matrix
    itself (``explicit_real_gram``, e.g. a compiled kernel that never stores the Jacobian):
    that route plus a plain simulation is the cheaper one there (mt_hybrid_state: about 1.5×)
    — unless the model gives the signal with its Fisher matrix in one pass
    (``explicit_signal_and_fisher``; mt_generalized_bloch)."""
    model.check_theta(theta)
    theta64 = theta.to(torch.float64)
    both = model.explicit_signal_and_fisher(theta64[:0]) is not None
    if not both and (model.explicit_real_gram(theta64[:0]) is not None
                     or model.explicit_fisher_information(theta64[:0]) is not None):
        with torch.no_grad():
            signal = model.simulate(theta64).to(torch.complex128)
        return signal, crb_details(model, theta, chunk_size=chunk_size, rcond=rcond)
    chunk_size = chunk_size or (_GRAM_CHUNK if both else default_chunk_size(model))
    signals, parts = [], []
    for start in range(0, theta.shape[0], chunk_size):
        th = theta64[start:start + chunk_size]
        if both:
            sig, F = model.explicit_signal_and_fisher(th)
        else:
            sig, columns = _signal_and_jacobian(model, th)
            F = _fisher_from_columns(columns, sig).to(torch.float64)
        signals.append(_as_complex(sig).to(torch.complex128))
        parts.append(_invert(model, F, th, rcond))
    if not signals:
        signals.append(torch.zeros(0, model.n_timepoints, dtype=torch.complex128,
                                   device=theta.device))
    return torch.cat(signals), _joined(parts, model, theta)


def _invert(model: SignalModel, F: torch.Tensor, theta: torch.Tensor,
            rcond: float | None) -> CRBResult:
    """:func:`_invert_fisher` with the default ``rcond`` and the parameter scales of
    :func:`crb_details` (``max(|θ|, width of the training range)``)."""
    if rcond is None:
        rcond = 1000 * torch.finfo(torch.float64).eps
    width = torch.tensor([hi - lo for lo, hi in model.train_ranges.values()],
                         dtype=torch.float64, device=theta.device)
    return _invert_fisher(F, model.n_parameters, rcond, torch.maximum(theta.abs(), width))


def _joined(parts: list[CRBResult], model: SignalModel, theta: torch.Tensor) -> CRBResult:
    """The chunks' results as one, variances in ``theta``'s dtype."""
    if not parts:                                           # no voxels
        return CRBResult(variance=theta.new_zeros(0, model.n_parameters),
                         singular=torch.zeros(0, dtype=torch.bool, device=theta.device))
    return CRBResult(variance=torch.cat([r.variance for r in parts]).to(theta.dtype),
                     singular=torch.cat([r.singular for r in parts]))
