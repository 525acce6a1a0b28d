"""Subspace compression of signals (docs/statistics.md §3): an SVD basis of noiseless training signals.

MRF signals of a model live close to a low-dimensional linear subspace. With ``U`` [T, k] the
first k right singular vectors of a matrix of noiseless signals (rows), the compressed data are
``z = Uᴴ y``; for white noise they keep white noise of the same σ, so a network on ``z`` sees
the same statistics in k instead of T dimensions, and the CRB of the compressed data follows
from ``Uᴴ J`` (``crbnet.crb(..., basis=U)``). Compression can only lose information, so the
compressed CRB is ≥ the full one; :func:`crb_inflation` reports the ratio per parameter.

``k`` is given, or chosen as the smallest number of singular vectors that hold a fraction
``energy`` of the signal energy (sum of squared singular values).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from .errors import InputError
from .models.base import SignalModel


@dataclass
class Subspace:
    """An orthonormal basis ``basis`` [T, k] (complex128) with the singular values it came from.

    Attributes:
        basis: [T, k] orthonormal columns, ordered by decreasing singular value.
        singular_values: all singular values of the fitting matrix (for the energy curve).
        energy: fraction of the fitting signals' energy the k vectors capture.
    """

    basis: torch.Tensor
    singular_values: torch.Tensor
    energy: float

    @property
    def k(self) -> int:
        return int(self.basis.shape[1])

    def truncate(self, k: int) -> "Subspace":
        """The first ``k`` vectors (a basis fitted once can be truncated, never extended)."""
        if not 1 <= k <= self.k:
            raise InputError(f"subspace k={k} must be between 1 and {self.k}")
        e = float((self.singular_values[:k] ** 2).sum() / (self.singular_values ** 2).sum())
        return Subspace(self.basis[:, :k].clone(), self.singular_values, e)


def choose_k(singular_values: torch.Tensor, energy: float) -> int:
    """Smallest k whose singular vectors hold at least ``energy`` of the total energy."""
    if not 0 < energy <= 1:
        raise InputError(f"subspace energy must be in (0, 1], got {energy}")
    power = singular_values.to(torch.float64) ** 2
    captured = power.cumsum(0) / power.sum()
    k = int((captured < energy - 1e-15).sum()) + 1
    return min(k, singular_values.numel())


def fit_subspace(signals: torch.Tensor, k: int | None = None,
                 energy: float = 0.9999999) -> Subspace:
    """SVD basis of noiseless signals [N, T] (rows = voxels); ``k`` wins over ``energy``.

    Use at least a few times more signals than the expected k, drawn from the training
    distribution (the basis is only as good as the signals it has seen).
    """
    if signals.ndim != 2:
        raise InputError(f"signals must be [N, T], got {list(signals.shape)}")
    signals = signals.to(torch.complex128)
    _, s, vh = torch.linalg.svd(signals, full_matrices=False)
    if k is None:
        k = choose_k(s, energy)
    if not 1 <= k <= s.numel():
        raise InputError(f"subspace k={k} must be between 1 and {s.numel()} "
                         f"(min of the number of signals and time points)")
    e = float((s[:k] ** 2).sum() / (s ** 2).sum())
    return Subspace(vh[:k].mH.contiguous(), s, e)


def crb_inflation(model: SignalModel, theta: torch.Tensor, basis: torch.Tensor,
                  crb_full: torch.Tensor | None = None) -> dict[str, float]:
    """How much compression raises the CRB: per parameter, the median over ``theta`` of
    CRB(compressed) / CRB(full) (≥ 1; 1 means nothing lost).

    Voxels whose full-data bound is infinite (singular Fisher matrix) are left out; a finite
    bound that compression makes infinite counts as an infinite ratio.
    """
    from .crb import SingularFisherWarning, crb

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SingularFisherWarning)
        full = crb(model, theta, warn=False) if crb_full is None else crb_full.to(torch.float64)
        comp = crb(model, theta, basis=basis.to(torch.complex128), warn=False)
    ratio = comp.to(torch.float64) / full.to(comp.device, torch.float64)
    out = {}
    for j, p in enumerate(model.parameters):
        r = ratio[:, j]
        r = r[torch.isfinite(full[:, j].to(r.device))]
        out[p] = float(r.median()) if r.numel() else float("inf")
    return out


__all__ = ["Subspace", "fit_subspace", "choose_k", "crb_inflation"]
