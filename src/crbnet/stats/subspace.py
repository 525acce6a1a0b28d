"""Subspace compression of signals (docs/statistics.md §3): an SVD basis of noiseless training signals.

MRF signals of a model live close to a low-dimensional linear subspace. With ``U`` [T, k] the
first k right singular vectors of a matrix of noiseless signals (rows), the compressed data are
``z = Uᴴ y``; for white noise they keep white noise of the same σ, so a network on ``z`` sees
the same statistics in k instead of T dimensions, and the CRB of the compressed data follows
from ``Uᴴ J`` (``crbnet.crb(..., basis=U)``). Compression can only lose information, so the
compressed CRB is ≥ the full one; :func:`crb_inflation` reports the ratio per parameter.

``k`` is given, or chosen as the smallest number of singular vectors that hold a fraction
``energy`` of the signal energy (sum of squared singular values).

A user's own basis (what a low-rank reconstruction hands over with its coefficient images) is
read by :func:`load_basis` — the one loader every command uses — and must have orthonormal
columns (``max |UᴴU − I| ≤ 1e-6``): only then does white noise of std σ in the time series stay
white noise of the same σ in the coefficients, which every noise estimate and CRB relies on.
It may be real or complex, stored T × K or K × T (the side as long as the sequence is time), and
cut to its first K columns (``rank``: a reconstruction often stores more vectors than it used;
the coefficients are ``Uᴴ y`` with the columns kept). :func:`basis_hash` identifies a basis (checkpoints record it, so a network refuses coefficients
in another basis).
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from crbnet.errors import InputError
from crbnet.physics.models.base import SignalModel


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
    #: "svd" (fitted here, may be truncated) or "user" (given: used whole, never truncated)
    source: str = "svd"

    @property
    def k(self) -> int:
        return int(self.basis.shape[1])

    def truncate(self, k: int) -> "Subspace":
        """The first ``k`` vectors (a basis fitted once can be truncated, never extended)."""
        if self.source == "user" and k != self.k:
            raise InputError(f"a given basis is used whole (k={self.k}), not truncated to {k}")
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
    return Subspace(vh[:k].mH.resolve_conj().contiguous(), s, e)


def project(signals: torch.Tensor, basis: torch.Tensor | None) -> torch.Tensor:
    """Subspace coefficients ``Uᴴ y`` for each row of ``signals`` [..., T] -> [..., K], in the
    signals' dtype and device (``f @ conj(U)`` is ``(Uᴴ f)ᵀ`` row by row); the signals
    themselves when there is no basis. The one projection every part of crbnet uses."""
    if basis is None:
        return signals
    return signals @ basis.to(dtype=signals.dtype, device=signals.device).conj()


def user_subspace(basis: torch.Tensor, signals: torch.Tensor) -> Subspace:
    """A given basis U [T, K] as a :class:`Subspace`, with the fraction of the energy of the
    noiseless ``signals`` [N, T] it keeps and the singular values of their coefficients."""
    u = basis.to(torch.complex128)
    signals = signals.to(torch.complex128)
    coefficients = project(signals, u)
    energy = float(coefficients.abs().pow(2).sum() / signals.abs().pow(2).sum())
    return Subspace(u, torch.linalg.svdvals(coefficients), energy, source="user")


def crb_inflation(model: SignalModel, theta: torch.Tensor, basis: torch.Tensor,
                  crb_full: torch.Tensor | None = None) -> dict[str, float]:
    """How much compression raises the CRB: per parameter, the median over ``theta`` of
    CRB(compressed) / CRB(full) (≥ 1; 1 means nothing lost).

    Voxels whose full-data bound is infinite (singular Fisher matrix) are left out; a finite
    bound that compression makes infinite counts as an infinite ratio.
    """
    from crbnet.stats.crb import SingularFisherWarning, crb

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


#: Largest ``|UᴴU − I|`` entry accepted for a user's basis.
ORTHONORMAL_TOLERANCE = 1e-6
#: Variable names looked for in a .h5/.mat file holding several arrays.
BASIS_NAMES = ("basis", "U", "u", "Phi", "phi", "V", "v")


def check_orthonormal(basis: torch.Tensor, what: str = "basis",
                      tolerance: float = ORTHONORMAL_TOLERANCE) -> None:
    """InputError unless ``basis`` [T, K] has orthonormal columns within ``tolerance``."""
    if basis.ndim != 2 or not 1 <= basis.shape[1] <= basis.shape[0]:
        raise InputError(f"{what}: expected a [T, K] matrix with 1 <= K <= T (time points in "
                         f"rows), got shape {list(basis.shape)}")
    if not torch.isfinite(torch.view_as_real(basis.to(torch.complex128))).all():
        raise InputError(f"{what}: contains NaN or Inf")
    u = basis.to(torch.complex128)
    error = float((u.mH @ u - torch.eye(u.shape[1], dtype=u.dtype)).abs().max())
    if not error <= tolerance:
        raise InputError(f"{what}: columns are not orthonormal (max |U^H U - I| = {error:.3g} > "
                         f"{tolerance:g})")


def _read_array(path: Path) -> np.ndarray:
    """The basis array of a .npy, .h5/.hdf5 or .mat file (one 2-D array, or one of
    :data:`BASIS_NAMES`); a .mat array in MATLAB's axis order, whatever its version."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise InputError(f"{path}: not a readable .npy array ({exc})") from None
    if suffix == ".mat":
        from crbnet.matfile import variables

        matrices = {name: var for name, var in variables(path, "basis file").items()
                    if len(var.shape) == 2}
        return _pick_array(matrices, path).read()
    if suffix in (".h5", ".hdf5"):
        return _pick_array(_read_hdf5(path), path)
    raise InputError(f"{path}: basis files must be .npy, .h5/.hdf5 or .mat")


def _read_hdf5(path: Path) -> dict[str, np.ndarray]:
    import h5py

    out: dict[str, np.ndarray] = {}
    try:
        with h5py.File(path, "r") as f:
            def visit(name: str, obj: object) -> None:
                if isinstance(obj, h5py.Dataset) and obj.ndim == 2:
                    out[name.split("/")[-1]] = obj[()]
            f.visititems(visit)
    except OSError as exc:
        raise InputError(f"{path}: not a readable HDF5 file ({exc})") from None
    for name, a in out.items():        # complex as a compound (real, imag), as MATLAB writes it
        if a.dtype.names and {"real", "imag"} <= set(a.dtype.names):
            out[name] = a["real"] + 1j * a["imag"]
    return out


def _pick_array(arrays: dict, path: Path):
    for name in BASIS_NAMES:
        if name in arrays:
            return arrays[name]
    if len(arrays) == 1:
        return next(iter(arrays.values()))
    raise InputError(f"{path}: expected one 2-D array (or one named {', '.join(BASIS_NAMES)}), "
                     f"found {sorted(arrays) or 'none'}")


def _time_in_rows(array: np.ndarray, n_timepoints: int | None, path: Path) -> np.ndarray:
    """The stored matrix as U [T, K]: it may be stored either way round. The side equal to the
    sequence's ``n_timepoints`` is time (rows kept when both are); without a sequence, the
    longer side."""
    rows, cols = array.shape
    if n_timepoints is None:
        return array if rows >= cols else array.T
    if rows == n_timepoints:
        return array
    if cols == n_timepoints:
        return array.T
    raise InputError(f"basis {path} is {rows} × {cols}: neither side is the sequence's "
                     f"{n_timepoints} time points")


def load_basis(path: str | Path, n_timepoints: int | None = None,
               rank: int | None = None) -> torch.Tensor:
    """A user's basis U [T, K] (complex128) from .npy, .h5/.hdf5 or MATLAB .mat (v5 or v7.3).

    The matrix may be real or complex and stored T × K or K × T: the side of length
    ``n_timepoints`` (the sequence's time points) is time; without ``n_timepoints`` the longer
    side is. ``rank`` keeps the first K columns (all by default; it may not exceed the stored
    columns). Checked: numeric, finite, orthonormal columns (:func:`check_orthonormal`, on the
    columns kept). Any problem is one :class:`InputError` line.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"basis file not found: {path}")
    array = np.asarray(_read_array(path))
    if not (np.issubdtype(array.dtype, np.number) and array.ndim == 2):
        raise InputError(f"basis {path}: expected a numeric [T, K] matrix, got "
                         f"{array.dtype} of shape {list(array.shape)}")
    array = _time_in_rows(array, n_timepoints, path)
    if rank is not None:
        if not 1 <= rank <= array.shape[1]:
            raise InputError(f"basis rank {rank} asked for, but basis {path} has "
                             f"{array.shape[1]} columns (vectors)")
        array = array[:, :rank]
    basis = torch.from_numpy(np.ascontiguousarray(array.astype(np.complex128)))
    check_orthonormal(basis, f"basis {path}")
    return basis


def basis_hash(basis: torch.Tensor) -> str:
    """Short SHA-256 of the basis values (complex128, C order): the basis' identity."""
    data = basis.detach().to("cpu", torch.complex128).contiguous()
    h = hashlib.sha256(str(tuple(data.shape)).encode())
    h.update(torch.view_as_real(data).numpy().tobytes())
    return h.hexdigest()[:16]


def basis_record(basis: torch.Tensor) -> dict:
    """``{"hash", "shape"}`` of a basis (JSON-ready; sidecars and checkpoints)."""
    return {"hash": basis_hash(basis), "shape": [int(n) for n in basis.shape]}


def save_basis(path: str | Path, basis: torch.Tensor) -> None:
    """Write U [T, K] complex128 as .npy (atomically)."""
    from crbnet.files import write_npy

    write_npy(str(path), basis.detach().to("cpu", torch.complex128).numpy())


__all__ = ["Subspace", "project", "fit_subspace", "choose_k", "crb_inflation", "load_basis", "user_subspace",
           "check_orthonormal", "basis_hash", "basis_record", "save_basis",
           "ORTHONORMAL_TOLERANCE"]
