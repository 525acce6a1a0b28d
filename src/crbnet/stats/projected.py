"""A signal model seen through a basis: its signals as subspace coefficients ``Uᴴ f(θ)``.

Data reconstructed with a low-rank (subspace) method are K complex coefficient images in a
basis U [T, K] with orthonormal columns, not a time series of T images. With ``y = M0 f(θ) + n``
(complex white noise, σ per real and imaginary part) the coefficients are
``z = Uᴴ y = M0 Uᴴ f(θ) + Uᴴ n``, and ``Uᴴ n`` is again complex white noise of the same σ
(``Uᴴ U = I``). So coefficients follow the same measurement model as a time series of K
points whose noiseless signal is ``Uᴴ f(θ)`` — and every piece of crbnet written for a model
(CRBs, NLLS, dictionary matching, phantoms, parameter maps, noise estimates) works on
coefficients when it is handed a :class:`ProjectedModel` instead of the model. In particular
the CRB of the coefficients, ``F = Re((UᴴJ)ᴴ(UᴴJ))/σ²`` with ``J`` the Jacobian including the
complex M0, is what :func:`crbnet.crb` computes for it (forward-mode derivatives pass through
the linear projection).
"""

from __future__ import annotations

import torch

from crbnet.physics.models.base import SignalModel
from crbnet.stats.subspace import project


class ProjectedModel(SignalModel):
    """``model`` with its signals projected on ``basis``: ``simulate`` returns ``Uᴴ f`` [N, K].

    Parameters, bounds, ranges, fixed values and the sequence are the wrapped model's; only the
    number of "time points" (``n_timepoints`` = K) and the signal change.

    Args:
        model: the signal model (not itself projected).
        basis: [T, K] complex with orthonormal columns (checked by the caller that read it,
            :func:`crbnet.stats.subspace.load_basis`).
    """

    def __init__(self, model: SignalModel, basis: torch.Tensor) -> None:
        from crbnet.stats.subspace import basis_hash

        if isinstance(model, ProjectedModel):
            raise TypeError("a ProjectedModel cannot be projected again")
        if basis.ndim != 2 or basis.shape[0] != model.n_timepoints:
            raise ValueError(f"basis of shape {list(basis.shape)} does not fit "
                             f"{model.n_timepoints} time points")
        self.base = model
        self.basis = basis.detach().to("cpu", torch.complex128)
        self.basis_hash = basis_hash(self.basis)
        self._cache: dict[tuple, torch.Tensor] = {}
        # The wrapped model's description, so everything that reads a model reads this one.
        self.name = model.name
        self.sequence_kind = model.sequence_kind
        self.specs = model.specs
        self.default_fixed = model.default_fixed
        self.training_defaults = model.training_defaults
        self.sequence = model.sequence
        self.fixed = model.fixed
        self.parameters = model.parameters
        chunk = getattr(model, "crb_chunk_size", None)
        if chunk is not None:
            self.crb_chunk_size = chunk

    @property
    def n_timepoints(self) -> int:
        return int(self.basis.shape[1])

    @property
    def n_coefficients(self) -> int:
        return int(self.basis.shape[1])

    def basis_as(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """U in ``dtype`` on ``device`` (cached: the projection runs once per simulation)."""
        key = (dtype, str(device))
        if key not in self._cache:
            self._cache[key] = self.basis.to(device=device, dtype=dtype)
        return self._cache[key]

    def project(self, signals: torch.Tensor) -> torch.Tensor:
        """``Uᴴ y`` per row of ``signals`` [..., T] (real input is taken as complex)."""
        if not signals.is_complex():
            signals = torch.complex(signals, torch.zeros_like(signals))
        return project(signals, self.basis_as(signals.dtype, signals.device))

    def simulate(self, theta: torch.Tensor, *, check: bool = True) -> torch.Tensor:
        return self.project(self.base.simulate(theta, check=check))

    def explicit_signal_and_jacobian(self, theta: torch.Tensor
                                     ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The wrapped model's own derivative (if any), projected: ``Uᴴ f`` and ``Uᴴ ∂f/∂θ``."""
        explicit = self.base.explicit_signal_and_jacobian(theta)
        if explicit is None:
            return None
        signal, columns = explicit
        return self.project(signal), self.project(columns)

    def explicit_real_gram(self, theta: torch.Tensor) -> torch.Tensor | None:
        return None          # projected signals are complex in general

    def describe(self) -> dict:
        out = self.base.describe()
        out["n_timepoints"] = self.n_timepoints
        out["basis"] = {"hash": self.basis_hash, "shape": list(self.basis.shape)}
        return out

    def __repr__(self) -> str:
        return (f"ProjectedModel({self.base!r}, basis {list(self.basis.shape)} "
                f"{self.basis_hash})")


def unprojected(model: SignalModel) -> SignalModel:
    """The model behind a :class:`ProjectedModel` (any other model as it is)."""
    return model.base if isinstance(model, ProjectedModel) else model


__all__ = ["ProjectedModel", "unprojected"]
