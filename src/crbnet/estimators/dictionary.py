"""Dictionary matching, the MR-fingerprinting standard (Ma et al., Nature 2013), in SVD space
(McGivney et al., IEEE TMI 2014).

The dictionary holds the noiseless signal ``f(θ_a)`` (M0 = 1) of every atom ``θ_a`` of a grid
over the estimated parameters. A voxel ``y`` is matched to the atom with the largest normalized
inner product ``|⟨f_a, y⟩| / ‖f_a‖`` — the maximum-likelihood atom when M0 is a free complex
scalar — and its M0 is the least-squares value ``⟨f_a, y⟩ / ‖f_a‖²``.

Matching happens in a k-dimensional subspace: the top right-singular vectors ``V_k`` of the
dictionary of unit-norm atoms (from its T×T Gram matrix, accumulated chunk by chunk). A row
signal is compressed as ``y @ V_k``; inner products between compressed rows equal those between
the full rows projected on the subspace. ``k`` is the smallest rank that keeps a fraction
``energy`` of the dictionary's energy (or a given ``rank``).

On a grid, the best atom is refined between the nodes (``refine``, on by default for grids of
at least ``MIN_REFINE_NODES`` nodes per axis):
the estimate is the maximum of a quadratic fitted to the scores of its 3^P neighbours, the
window following the maximum along a correlation ridge (:mod:`crbnet.estimators.subgrid`),
which removes most of the grid's quantization error and the
bias it causes in correlated parameters; M0 and the residual are then those of the simulated
signal at the refined estimate.

Memory: the compressed dictionary (A × k complex) is stored, and the uncompressed one too when
it is small (``full_atoms_bytes``; it gives the exact M0 and residual of a match,
:meth:`DictionaryEstimator.predict_with_fit`); matching works on blocks of at most
``chunk_elements`` voxel × atom scores, so the working set stays bounded whatever the numbers
of voxels and atoms.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import torch

from crbnet import progress as progress_contract
from crbnet.errors import InputError
from crbnet.estimators.protocol import (
    SignalFit,
    as_signal_tensor,
    least_squares_m0,
    register_estimator,
)
from crbnet.limits import check_memory, count
from crbnet.physics.models.base import SignalModel, resolve_ranges
from crbnet.progress import ProgressFactory

#: Default dictionary size: about this many atoms in total, spread evenly over the parameters.
DEFAULT_ATOMS = 10_000
#: Refinement is on by default only where every axis has at least this many nodes: it assumes
#: the score is nearly quadratic within a cell, which coarse axes do not give (mt_hybrid_state's
#: default 5 nodes per axis: no better on average, twice the matching time).
MIN_REFINE_NODES = 10


def parameter_axis(low: float, high: float, n: int, log: bool = False,
                   centered: bool = False) -> np.ndarray:
    """``n`` values from ``low`` to ``high`` (SI), log-spaced if ``log``.

    With ``centered`` the values are the centers of ``n`` equal cells (linear or log), so no
    value sits on the range's edge; otherwise both ends are included.
    """
    if n < 1:
        raise InputError(f"number of grid points must be >= 1, got {n}")
    if centered:
        u = (np.arange(n) + 0.5) / n
    else:
        u = np.linspace(0.0, 1.0, n) if n > 1 else np.array([0.5])
    if log and low <= 0:
        raise InputError("a log-spaced axis needs a positive lower end")
    return axis_values(low, high, u, log)


def axis_values(low: float, high: float, u: np.ndarray, log: bool = False) -> np.ndarray:
    """Values at fractions ``u`` of the way from ``low`` (0) to ``high`` (1), linearly or in
    log units."""
    if log:
        return np.exp(math.log(low) + u * (math.log(high) - math.log(low)))
    return low + u * (high - low)


def default_points_per_parameter(n_parameters: int, total: int = DEFAULT_ATOMS) -> int:
    """Points per parameter for a product grid of about ``total`` atoms (at least 3)."""
    return max(3, int(round(total ** (1.0 / n_parameters))))


@register_estimator("dictionary", "MRF dictionary matching (maximum normalized inner "
                                 "product) in SVD space")
class DictionaryEstimator:
    """Maximum normalized inner product matching against a simulated dictionary.

    Args:
        model: the signal model.
        n_points: grid points per estimated parameter: an int for all, or ``{name: n}``
            (missing names get the default). Default: about 10⁴ atoms in total.
        ranges: ``{name: (low, high)}`` (SI) of the grid; default the model's training ranges.
            Parameters the model samples log-uniformly get log-spaced axes, others linear.
        atoms: explicit [A, P] atom parameters (SI) instead of a grid.
        rank: SVD rank k; default: smallest k keeping ``energy`` of the dictionary energy.
        energy: fraction of the energy of the unit-norm atoms the subspace keeps.
        chunk_elements: largest number of voxel × atom scores held at once while matching —
            the memory bound of matching.
        simulate_chunk: atoms simulated per call while building (memory of the simulation).
        device: where the dictionary lives and matching runs (default CPU).
        progress: a :class:`~crbnet.progress.ProgressFactory` for a bar while building
            (None, or a bool as older callers pass: silent).
        full_atoms_bytes: the uncompressed atoms (A × T complex128) are kept too when they
            take at most this many bytes; :meth:`predict_with_fit` then takes the matched
            atoms from them instead of simulating them again.
        refine: refine the best atom between the grid nodes (module docstring); default on for a
            grid with at least ``MIN_REFINE_NODES`` nodes on every axis, off for coarser grids
            and for explicit ``atoms`` (which have no grid: ``True`` is refused there).

    The dictionary is simulated on the first :meth:`predict` (or an explicit :meth:`build`).
    """

    name = "dictionary"

    def __init__(self, model: SignalModel, n_points: int | Mapping[str, int] | None = None,
                 ranges: Mapping[str, tuple[float, float]] | None = None,
                 atoms: torch.Tensor | np.ndarray | None = None, rank: int | None = None,
                 energy: float = 1 - 1e-6, chunk_elements: int = 2 ** 22,
                 simulate_chunk: int = 4096, device: torch.device | str | None = None,
                 progress: ProgressFactory | bool | None = None, full_atoms_bytes: int = 2 ** 28,
                 refine: bool | None = None) -> None:
        self.model = model
        self.n_points = n_points
        self.ranges = resolve_ranges(model, ranges)
        self.rank = rank
        self.energy = float(energy)
        self.chunk_elements = int(chunk_elements)
        self.simulate_chunk = int(simulate_chunk)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.progress = progress
        self.full_atoms_bytes = int(full_atoms_bytes)
        if not 0 < self.energy <= 1:
            raise InputError(f"energy must be in (0, 1], got {energy}")
        if self.chunk_elements < 1 or self.simulate_chunk < 1:
            raise InputError("chunk_elements and simulate_chunk must be >= 1")
        if rank is not None and not 1 <= rank <= model.n_timepoints:
            raise InputError(f"rank must be in [1, {model.n_timepoints}], got {rank}")
        self.grid_index: torch.Tensor | None = None     # [A, P] integer grid coordinates
        self.axes: dict[str, np.ndarray] | None = None
        if atoms is not None:
            theta = torch.as_tensor(np.asarray(atoms, dtype=np.float64))
            model.check_theta(theta)
            self.atoms_theta = theta
        else:
            self.atoms_theta, self.grid_index, self.axes = self._grid_atoms()
        if refine and self.grid_index is None:
            raise InputError("refine needs a grid dictionary (not explicit atoms)")
        if refine is None:
            refine = self.axes is not None and min(map(len, self.axes.values())) >= \
                MIN_REFINE_NODES
        self.refine = bool(refine)
        self.basis: torch.Tensor | None = None           # [T, k] V_k
        self.atoms_compressed: torch.Tensor | None = None  # [A, k] unit-norm compressed atoms
        self.atom_norms: torch.Tensor | None = None       # [A] compressed norm of f(θ_a)
        self.captured_energy: float | None = None
        self._atoms_real: torch.Tensor | None = None      # [A, 2k] (Re, Im) for fast scores
        self.atoms_full: torch.Tensor | None = None       # [A, T] f(θ_a), if small enough

    # ---- description -----------------------------------------------------------------------
    @property
    def parameters(self) -> tuple[str, ...]:
        return self.model.parameters

    @property
    def n_atoms(self) -> int:
        return int(self.atoms_theta.shape[0])

    def _grid_atoms(self) -> tuple[torch.Tensor, torch.Tensor, dict[str, np.ndarray]]:
        P = self.model.n_parameters
        if self.n_points is None or isinstance(self.n_points, Mapping):
            per = dict(self.n_points or {})
            for name in per:
                if name not in self.model.parameters:
                    raise InputError(f"unknown parameter {name!r} in n_points; estimated: "
                                     f"{', '.join(self.model.parameters)}")
            default = default_points_per_parameter(P)
            counts = [int(per.get(p, default)) for p in self.model.parameters]
        else:
            counts = [int(self.n_points)] * P
        # theta and grid index of every atom, and its compressed signal (rank >= 1)
        check_memory(count(*counts, P * 8 * 3 + 16),
                     f"a dictionary of {' x '.join(str(n) for n in counts)} atoms")
        axes = {}
        for p, n in zip(self.model.parameters, counts):
            lo, hi = self.ranges[p]
            axes[p] = parameter_axis(lo, hi, n, log=self.model.spec(p).log_uniform)
        mesh = torch.meshgrid(*(torch.arange(n) for n in counts), indexing="ij")
        index = torch.stack([m.reshape(-1) for m in mesh], 1)
        theta = torch.stack([torch.as_tensor(axes[p], dtype=torch.float64)[index[:, j]]
                             for j, p in enumerate(self.model.parameters)], 1)
        return theta, index, axes

    # ---- building ----------------------------------------------------------------------------
    def _atom_chunks(self) -> list[tuple[int, int]]:
        size = self.simulate_chunk
        return [(s, min(s + size, self.n_atoms)) for s in range(0, self.n_atoms, size)]

    def build(self) -> "DictionaryEstimator":
        """Simulate the atoms, find the SVD subspace, store the compressed dictionary.

        Two passes over the atoms (the first accumulates the Gram matrix of the unit-norm
        atoms, the second compresses), unless all atoms fit in one ``simulate_chunk``.
        """
        if self.basis is not None:
            return self
        chunks = self._atom_chunks()
        one_pass = len(chunks) == 1
        bars = progress_contract.resolve(self.progress)
        with bars(total=self.n_atoms * (1 if one_pass else 2), desc="dictionary",
                  unit="atom") as bar:
            gram, kept = self._gram(chunks, one_pass, bar)
            basis = self._subspace(gram)
            self._compress(chunks, kept, one_pass, basis, bar)
        return self

    def _gram(self, chunks: list[tuple[int, int]], one_pass: bool, bar: Any
              ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """First pass: Dᴴ D of the unit-norm atoms D (rows), and the atoms themselves when
        they were simulated in one chunk."""
        T = self.model.n_timepoints
        gram = torch.zeros(T, T, dtype=torch.complex128, device=self.device)
        kept: list[torch.Tensor] = []
        for start, stop in chunks:
            f = self._simulate(start, stop)
            unit = f / f.norm(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
            gram += unit.mH @ unit            # Dᴴ D of the row-atom matrix D, chunk by chunk
            if one_pass:
                kept.append(f)
            bar.update(stop - start)
        return gram, kept

    def _subspace(self, gram: torch.Tensor) -> torch.Tensor:
        """The basis [T, k] of the leading eigenvectors of ``gram`` (k = ``rank``, else the
        smallest keeping ``energy``); sets ``captured_energy``."""
        T = self.model.n_timepoints
        evals, evecs = torch.linalg.eigh(gram)
        evals, evecs = evals.flip(0).clamp_min(0), evecs.flip(1)
        total = evals.sum()
        if self.rank is not None:
            k = self.rank
        else:
            cumulative = torch.cumsum(evals, 0) / total
            k = int(torch.searchsorted(cumulative, torch.tensor(self.energy, dtype=evals.dtype,
                                                                 device=evals.device)).item()) + 1
            k = min(k, T)
        self.captured_energy = float(evals[:k].sum() / total)
        return evecs[:, :k].contiguous()

    def _compress(self, chunks: list[tuple[int, int]], kept: list[torch.Tensor],
                  one_pass: bool, basis: torch.Tensor, bar: Any) -> None:
        """Second pass: the atoms in the subspace, unit-normalized, with their norms (and the
        full atoms when they fit in ``full_atoms_bytes``)."""
        compressed, norms, full = [], [], []
        keep_full = self.n_atoms * self.model.n_timepoints * 16 <= self.full_atoms_bytes
        for i, (start, stop) in enumerate(chunks):
            f = kept[i] if one_pass else self._simulate(start, stop)
            if keep_full:
                full.append(f)
            c = f @ basis
            n = c.norm(dim=1)
            compressed.append(c / n.clamp_min(torch.finfo(torch.float64).tiny)[:, None])
            norms.append(n)
            if not one_pass:
                bar.update(stop - start)
        self.basis = basis
        self._atoms_real = None
        self.atoms_compressed = torch.cat(compressed)
        self.atom_norms = torch.cat(norms)
        self.atoms_full = torch.cat(full) if keep_full else None

    def _simulate(self, start: int, stop: int) -> torch.Tensor:
        theta = self.atoms_theta[start:stop].to(self.device)
        return self.model.simulate(theta, check=False).to(torch.complex128)

    def compress(self, signals: torch.Tensor) -> torch.Tensor:
        """Project full signals [N, T] on the SVD subspace: [N, k]."""
        self.build()
        return signals.to(device=self.device, dtype=torch.complex128) @ self.basis

    # ---- matching --------------------------------------------------------------------------
    def match(self, signals: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Best atom of each voxel.

        Returns:
            (index [N] int64 into the atoms, M0 [N] complex128), on the dictionary's device.
        """
        return self._match(as_signal_tensor(signals, self.model.n_timepoints,
                                            device=self.device), refine=False)[:2]

    def _match(self, y: torch.Tensor, refine: bool
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`match` of signals already checked and on the dictionary's device, with the
        estimates [N, P] (float64, CPU): the matched atoms', refined if ``refine``."""
        self.build()
        A = self.n_atoms
        atom_block = min(A, self.chunk_elements)
        voxel_block = max(1, self.chunk_elements // atom_block)
        index = torch.empty(y.shape[0], dtype=torch.int64, device=self.device)
        m0 = torch.empty(y.shape[0], dtype=torch.complex128, device=self.device)
        theta = torch.empty(y.shape[0], self.model.n_parameters, dtype=torch.float64)
        for v0 in range(0, y.shape[0], voxel_block):
            yc = self.compress(y[v0:v0 + voxel_block])
            best = torch.full((yc.shape[0],), -1.0, dtype=torch.float64, device=self.device)
            best_idx = torch.zeros(yc.shape[0], dtype=torch.int64, device=self.device)
            for a0 in range(0, A, atom_block):
                score = self._scores(yc, a0, a0 + atom_block)
                value, idx = score.max(dim=1)
                better = value > best          # strict: the first atom wins ties, as in max()
                best = torch.where(better, value, best)
                best_idx = torch.where(better, idx + a0, best_idx)
            rows = slice(v0, v0 + yc.shape[0])
            index[rows] = best_idx
            # M0 = ⟨f_a, y⟩ / ‖f_a‖² in the subspace (unit atom â = f_a/‖f_a‖).
            ip = (self.atoms_compressed[best_idx].conj() * yc).sum(1)
            m0[rows] = ip / self.atom_norms[best_idx].clamp_min(torch.finfo(torch.float64).tiny)
            theta[rows] = (self._refined(yc, best_idx) if refine
                           else self.atoms_theta[best_idx.cpu()])
        return index, m0, theta

    # ---- sub-grid refinement -------------------------------------------------------------------
    def _refined(self, yc: torch.Tensor, best_idx: torch.Tensor) -> torch.Tensor:
        """Refined estimates [N, P] (float64, CPU) of compressed voxels ``yc`` whose best atoms
        are ``best_idx`` (:mod:`crbnet.estimators.subgrid`)."""
        from crbnet.estimators.subgrid import refine

        counts = [len(self.axes[p]) for p in self.model.parameters]
        strides = torch.tensor([math.prod(counts[j + 1:]) for j in range(len(counts))],
                               dtype=torch.int64, device=self.device)
        power = yc.norm(dim=1).square().clamp_min(torch.finfo(torch.float64).tiny)

        def scores_at(rows: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
            atoms = self.atoms_compressed[(nodes * strides).sum(-1)]            # [n, M, k]
            ip = (atoms.conj() * yc[rows, None, :]).sum(-1)
            return ip.abs().square() / power[rows, None]

        best = self.grid_index.to(self.device)[best_idx]
        block = max(1, self.chunk_elements // 3 ** len(counts))
        out = [self._grid_theta(refine(best[s:s + block], counts,
                                       lambda rows, nodes, s=s: scores_at(rows + s, nodes)))
               for s in range(0, yc.shape[0], block)]
        return torch.cat(out).cpu() if out else torch.zeros(0, len(counts), dtype=torch.float64)

    def _grid_theta(self, position: torch.Tensor) -> torch.Tensor:
        """Parameters [N, P] at fractional grid coordinates [N, P], interpolated along each
        axis as it is spaced (log or linear)."""
        columns = []
        for j, p in enumerate(self.model.parameters):
            axis = self.axes[p]
            u = position[:, j].cpu().numpy() / max(len(axis) - 1, 1)
            columns.append(torch.from_numpy(axis_values(float(axis[0]), float(axis[-1]), u,
                                                        self.model.spec(p).log_uniform)))
        return torch.stack(columns, 1)

    def _scores(self, yc: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """``|⟨â, y⟩|²`` [voxels, atoms] for the unit compressed atoms ``start:stop``.

        Written with two real matrix products (faster than a complex one):
        ``Re⟨a, y⟩ = a_r·y_r + a_i·y_i`` and ``Im⟨a, y⟩ = a_r·y_i − a_i·y_r``.
        """
        if self._atoms_real is None:
            self._atoms_real = torch.cat((self.atoms_compressed.real,
                                          self.atoms_compressed.imag), 1).contiguous()
        atoms = self._atoms_real[start:stop]
        re = torch.cat((yc.real, yc.imag), 1) @ atoms.T
        im = torch.cat((yc.imag, -yc.real), 1) @ atoms.T
        return re * re + im * im

    def top_matches(self, signals: torch.Tensor | np.ndarray, k: int,
                    exclusion: int = 1) -> torch.Tensor:
        """The ``k`` best atoms per voxel, each more than ``exclusion`` grid cells (in at least
        one parameter) from the better ones — distinct starting points for a local fit.

        Without a grid (explicit atoms) the ``k`` best distinct atoms are returned. When fewer
        than ``k`` atoms qualify the best one is repeated.

        Returns:
            [N, k] int64 atom indices, best first.
        """
        self.build()
        y = as_signal_tensor(signals, self.model.n_timepoints, device=self.device)
        A, P = self.n_atoms, self.model.n_parameters
        voxel_block = max(1, self.chunk_elements // (A * (P if self.grid_index is not None else 1)))
        grid = self.grid_index.to(self.device) if self.grid_index is not None else None
        out = torch.empty(y.shape[0], k, dtype=torch.int64, device=self.device)
        for v0 in range(0, y.shape[0], voxel_block):
            yc = self.compress(y[v0:v0 + voxel_block])
            score = self._scores(yc, 0, A)
            first = None
            for j in range(k):
                value, idx = score.max(dim=1)
                if first is None:
                    first = idx
                idx = torch.where(torch.isfinite(value), idx, first)
                out[v0:v0 + yc.shape[0], j] = idx
                if grid is not None:
                    near = ((grid[None, :, :] - grid[idx][:, None, :]).abs() <= exclusion).all(-1)
                    score = score.masked_fill(near, -math.inf)
                else:
                    score = score.scatter(1, idx[:, None], -math.inf)
        return out

    # ---- estimator interface -----------------------------------------------------------------
    def predict_with_m0(self, signals: torch.Tensor | np.ndarray
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """Parameters [N, P] (float64, SI) and complex M0 [N]: of the best-matching atoms, or
        with ``refine`` the least-squares M0 of the signal at the refined estimate."""
        if self.refine:
            fit = self.predict_with_fit(signals)
            return fit.theta, fit.m0
        out_device = signals.device if isinstance(signals, torch.Tensor) else torch.device("cpu")
        index, m0 = self.match(signals)
        theta = self.atoms_theta[index.cpu()]
        return theta.to(out_device), m0.to(out_device)

    def predict_with_fit(self, signals: torch.Tensor | np.ndarray) -> SignalFit:
        """Estimates with the least-squares M0 and residual energy of the signal at the
        estimate, in the full signal space (exact, unlike the subspace M0 of
        :meth:`match`). Unrefined, the matched atoms come from the stored uncompressed
        dictionary when it was kept (``full_atoms_bytes``); refined estimates, and atoms not
        kept, are simulated."""
        out_device = signals.device if isinstance(signals, torch.Tensor) else torch.device("cpu")
        y = as_signal_tensor(signals, self.model.n_timepoints, device=self.device)
        index, _, theta = self._match(y, self.refine)
        if self.atoms_full is not None and not self.refine:
            f = self.atoms_full[index]
        else:
            f = self.model.simulate(theta.to(self.device), check=False).to(torch.complex128)
        m0 = least_squares_m0(f, y)
        rss = (y - m0[:, None] * f).abs().square().sum(-1)
        return SignalFit(theta=theta.to(out_device), m0=m0.to(out_device),
                         rss=rss.to(out_device))

    def predict(self, signals: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Parameters [N, P] (float64, SI, order of ``parameters``)."""
        out_device = signals.device if isinstance(signals, torch.Tensor) else torch.device("cpu")
        y = as_signal_tensor(signals, self.model.n_timepoints, device=self.device)
        return self._match(y, self.refine)[2].to(out_device)

    def __repr__(self) -> str:
        return (f"DictionaryEstimator(model={self.model.name}, atoms={self.n_atoms}, "
                f"rank={None if self.basis is None else self.basis.shape[1]}, refine={self.refine})")
